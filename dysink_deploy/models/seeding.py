"""Random weights from a seed, safe when several streams are built at once (threads).

PyTorch's module constructors draw their initial weights from the process-wide CPU generator.
Seeding that generator and then constructing (what `torch.manual_seed(seed); Model(cfg)` does) is
a race when two threads build models at the same time: each one's `manual_seed` resets the
generator in the middle of the other's draws, so a model gets weights from neither seed
(issue 22: three torch streams in three threads gave other frames than alone). `seeded(seed)`
holds one lock over the seeding and the construction, and restores the generator's state
afterwards, so the caller's own random numbers are left as they were.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_CONSTRUCTION = threading.RLock()      # re-entrant: a seeded build may build a seeded part


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: the CPU generator seeded with `seed`, no other seeded build running. The same draws
    as `torch.manual_seed(seed)` before the construction (same weights as before the lock).
    Code that draws from the global generator without this lock (not the project's) still
    interleaves: pass a `torch.Generator` there."""
    with _CONSTRUCTION, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield
