"""The interpreter patches (bf16 casts and dots) and the exact-ratio argument of gate_decide."""

from __future__ import annotations

import numpy as np
import torch

from dysink_deploy.plugins import interpreter_fixes as fx


def test_bf16_rounding_matches_torch_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([
        torch.randn(200_000, generator=g) * 10.0 ** torch.randint(-30, 30, (200_000,), generator=g).float(),
        torch.tensor([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.0e38, -3.4e38, 1e-40, float("inf"), float("-inf")]),
        # exact ties: the 17th bit set, lower bits clear -> round to even
        torch.tensor([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -(1.0 + 2.0 ** -8)]),
    ])
    mine = fx.f32_to_bf16_bits(values.numpy())
    theirs = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(mine, theirs)
    assert fx.f32_to_bf16_bits(np.array([np.nan], np.float32))[0] & 0x7FFF > 0x7F80      # NaN stays NaN
    np.testing.assert_array_equal(fx.bf16_bits_to_f32(theirs), values.to(torch.bfloat16).float().numpy())


def test_float64_reciprocal_gives_correctly_rounded_ratios():
    """gate_decide computes count / H as float32(count * float64(1 / H)); for every head count up
    to 1024 that equals IEEE float32 division (what the reference's mean computes)."""
    for heads in range(1, 1025):
        count = np.arange(heads + 1, dtype=np.float64)
        mine = (count * (1.0 / heads)).astype(np.float32)
        exact = count.astype(np.float32) / np.float32(heads)
        assert (mine == exact).all(), heads
