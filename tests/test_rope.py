"""RoPE phases: equal to the reference's 1024-position complex table, and defined beyond it."""

from __future__ import annotations

import numpy as np
import torch

from dysink_deploy.config import DIT_PRESETS
from dysink_deploy.models.dit import apply_rope
from dysink_deploy.rope import rope_angles, rope_phases

CFG = DIT_PRESETS["wan2.1-t2v-1.3b"]


def reference_table(positions: int = 1024) -> torch.Tensor:
    """The reference's table: three sub-tables (44, 42, 42 dims) of polar(1, pos * theta^(-2j/dim)), complex128."""
    def sub(dim):
        inv = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        return torch.polar(torch.ones(positions, dim // 2, dtype=torch.float64),
                           torch.outer(torch.arange(positions, dtype=torch.float64), inv))
    return torch.cat([sub(44), sub(42), sub(42)], dim=1)           # [1024, 64]


def test_split_is_22_21_21():
    assert CFG.rope_split == (22, 21, 21)


def test_equals_reference_table_inside_1024():
    table = reference_table()
    f0, gh, gw = 1017, 3, 5
    ang = rope_angles(CFG, f0, 3, gh, gw)
    ref = torch.cat([
        table[f0:f0 + 3, :22][:, None, None, :].expand(3, gh, gw, 22),
        table[:gh, 22:43][None, :, None, :].expand(3, gh, gw, 21),
        table[:gw, 43:][None, None, :, :].expand(3, gh, gw, 21)], dim=-1).reshape(-1, 64)
    np.testing.assert_allclose(np.cos(ang), ref.real.numpy(), atol=1e-12)
    np.testing.assert_allclose(np.sin(ang), ref.imag.numpy(), atol=1e-12)


def test_hand_worked_angles_and_beyond_1024():
    # token (frame 1500, row 2, col 3): pair 0 turns by 1500, pair 22 by 2, pair 43 by 3 (frequency 1);
    # pair 1 by 1500 * 10000^(-2/44).
    ang = rope_angles(CFG, 1500, 1, 4, 4)
    tok = 2 * 4 + 3
    assert ang[tok, 0] == 1500.0 and ang[tok, 22] == 2.0 and ang[tok, 43] == 3.0
    assert np.isclose(ang[tok, 1], 1500 * 10000 ** (-2 / 44), rtol=1e-15)
    assert np.isfinite(rope_phases(CFG, 10 ** 6, 3, 30, 52)).all()


def test_apply_rope_is_complex_multiplication_of_adjacent_pairs():
    g = torch.Generator().manual_seed(0)
    cfg = DIT_PRESETS["tiny"]
    x = torch.randn(2 * 2 * 3, 2, cfg.head_dim, generator=g, dtype=torch.float64).float()
    phases = torch.from_numpy(rope_phases(cfg, 2000, 2, 2, 3))
    ang = torch.from_numpy(rope_angles(cfg, 2000, 2, 2, 3))
    ref = torch.view_as_real(torch.view_as_complex(x.double().reshape(12, 2, -1, 2))
                             * torch.polar(torch.ones_like(ang), ang)[:, None, :]).reshape(12, 2, -1)
    torch.testing.assert_close(apply_rope(x, phases).double(), ref, atol=2e-6, rtol=1e-6)
