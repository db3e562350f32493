"""Seeded noise, identical on every backend.

The reference draws noise with torch's CUDA generator; bit-identical noise
across devices is impossible there. We draw on the host with numpy's PCG64
keyed by (seed, block index), so every backend, and a resumed stream, gets
the same numbers for the same block: block i's noise does not depend on
how many blocks ran before it.
"""

from __future__ import annotations

import numpy as np


def block_noise(seed: int, block_index: int, shape: tuple[int, ...], steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Initial noise and the re-noising eps of each step after the first: float32."""
    rng = np.random.Generator(np.random.PCG64([seed, block_index]))
    x = rng.standard_normal(shape, dtype=np.float32)
    eps = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps - 1)]
    return x, eps
