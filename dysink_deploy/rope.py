"""3D RoPE phases of Wan2.1, computed for any absolute frame position.

Torch-free: every backend (torch, onnxruntime, TensorRT) takes the block's
phases as an input, so the runtime computes them here with numpy. The
reference precomputes a 1024-position table; we evaluate the same formula
(float64) at the requested positions, which equals the table inside 1024 and
keeps going past it.
"""

from __future__ import annotations

import numpy as np

from .config import DiTConfig


def _inv_freq(pairs: int, theta: float = 10000.0) -> np.ndarray:
    # Each axis uses its own sub-dimension (2 * pairs) in the exponent; theta: DiTConfig.rope_theta.
    dim = 2 * pairs
    return 1.0 / np.power(float(theta), np.arange(0, dim, 2, dtype=np.float64) / dim)


def rope_angles(cfg: DiTConfig, start_frame: int, frames: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Rotation angles in float64, shape [frames * grid_h * grid_w, head_dim // 2].

    Tokens are ordered (frame, row, column) row-major, as the DiT flattens
    its patch grid; pairs are laid out [time | height | width].
    """
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    pt, ph, pw = cfg.rope_split
    theta = cfg.rope_theta
    t = np.arange(start_frame, start_frame + frames, dtype=np.float64)[:, None] * _inv_freq(pt, theta)
    h = np.arange(grid_h, dtype=np.float64)[:, None] * _inv_freq(ph, theta)
    w = np.arange(grid_w, dtype=np.float64)[:, None] * _inv_freq(pw, theta)
    shape = (frames, grid_h, grid_w)
    ang = np.concatenate(
        [
            np.broadcast_to(t[:, None, None, :], shape + (pt,)),
            np.broadcast_to(h[None, :, None, :], shape + (ph,)),
            np.broadcast_to(w[None, None, :, :], shape + (pw,)),
        ],
        axis=-1,
    )
    return ang.reshape(frames * grid_h * grid_w, pt + ph + pw)


def rope_phases(cfg: DiTConfig, start_frame: int, frames: int, grid_h: int, grid_w: int) -> np.ndarray:
    """cos and sin of `rope_angles`, stacked: float32 [2, tokens, head_dim // 2]."""
    ang = rope_angles(cfg, start_frame, frames, grid_h, grid_w)
    return np.stack([np.cos(ang), np.sin(ang)]).astype(np.float32)


def timestep_frequencies(t: float, freq_dim: int) -> np.ndarray:
    """Wan's sinusoidal timestep embedding [cos | sin] of one timestep, float64 math, float32 out.

    The same formula as `models.dit.timestep_sinusoid` (the reference's float64
    computation). Graphs take it as an input (`t_freq`), like the RoPE phases:
    TensorRT has no float64 arithmetic, so computing it inside the graph would
    lose the reference's precision.
    """
    half = freq_dim // 2
    inv = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
    args = np.float64(t) * inv
    return np.concatenate([np.cos(args), np.sin(args)]).astype(np.float32)
