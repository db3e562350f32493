"""The Triton kernels on `kv_cache_dtype` pages (interpreted on CPU) against the PyTorch reference.

8-bit pages (int8, float8_e4m3fn) with their per (token, head) scales, and bf16 pages under an
fp16 / fp32 model: the kernels dequantise (or cast) inside GatedSinkAttention exactly as the
reference does (ops/kv_pages.py). Same rules as the model-precision pools
(test_gated_sink_attention_kernel.py): ratios identical to the reference's, and `out` within 2x the
reference's own error against a float64 evaluation of the same (dequantised) pages.
"""

from __future__ import annotations

import pytest
import torch

from dysink_deploy.errors import DysinkError
from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_ref
from dysink_deploy.ops.kv_pages import STORAGE, dequantise_pages, quantise_page
from dysink_deploy.plugins import launch
from dysink_deploy.plugins.variants import Tiles

from .test_gated_sink_attention_kernel import float64_attention

CASES = [(torch.float32, "int8"), (torch.float16, "int8"), (torch.bfloat16, "fp8"), (torch.float16, "fp8"),
         (torch.float16, "bf16"), (torch.float32, "bf16")]


def _paged(kv: str, pools: list[torch.Tensor], dtype: torch.dtype):
    """-> (stored pools, scales or (), the pools as the attention reads them, in `dtype`)."""
    if kv == "bf16":
        stored = [p.to(torch.bfloat16) for p in pools]
        return stored, (), [p.to(dtype) for p in stored]
    (kq, ks), (vq, vs) = (quantise_page(p, kv) for p in pools)
    return [kq, vq], (ks, vs), [dequantise_pages(kq, ks, dtype), dequantise_pages(vq, vs, dtype)]


@pytest.mark.parametrize("dtype,kv", CASES, ids=lambda c: str(c).split(".")[-1])
def test_pages_match_the_reference(dtype, kv):
    g = torch.Generator().manual_seed(3)
    tokens, heads, dim, pages = 37, 3, 16, 6
    q, k, v = (torch.randn(tokens, heads, dim, generator=g).to(dtype) for _ in range(3))
    # Rows of different magnitudes, as post-RoPE keys have: the per-row scales matter.
    mag = torch.rand(pages, tokens, heads, 1, generator=g) * 4 + 0.1
    pools = [torch.randn(pages, tokens, heads, dim, generator=g) * mag for _ in range(2)]
    (kq, vq), scales, (kd, vd) = _paged(kv, pools, dtype)
    assert kq.dtype == STORAGE[kv]
    ids = (torch.tensor([2, -1, 5]), torch.tensor([4, -1, 1, 9]))   # an empty slot, an id past the pool
    args = (q, k, v, kq, vq, *ids, 0.5, True, 1)
    out, ratios = launch.gated_sink_attention(*args, *scales, tiles=Tiles(16, 16, 4, 1), gate_splits=3)
    ref_out, ref_ratios = gated_sink_attention_ref(*args, *scales)
    assert ratios.tolist() == ref_ratios.tolist()
    same_meaning = tuple(torch.where(i < pages, i, -1) for i in ids)   # float64_attention knows only -1
    exact, exact_ratios = float64_attention(q, k, v, kd, vd, *same_meaning, 0.5, True, 1)
    assert ratios.tolist() == [float(torch.tensor(r, dtype=torch.float32)) for r in exact_ratios]
    assert out.dtype == dtype
    err = (out.double() - exact).abs().max().item()
    ref_err = (ref_out.double() - exact).abs().max().item()
    assert err <= 2 * ref_err, f"kernel error {err:.3g} > 2 x reference error {ref_err:.3g}"


def test_a_dropped_sink_on_8bit_pages():
    """The gate reads the dequantised page: a sink page equal to the local page ties (kept at any
    threshold >= 0); its mean key pushed along qbar drops it at threshold 0.5."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(16, 2, 16, generator=g) for _ in range(3))
    base = torch.randn(16, 2, 16, generator=g)
    loud = base + 5 * q.mean(0)[None]
    (kq, ks), (vq, vs) = quantise_page(torch.stack([base, loud]), "int8"), quantise_page(torch.stack([base, base]), "int8")
    args = (q, k, v, kq, vq, torch.tensor([0]), torch.tensor([1]), 0.5, False, 0, ks, vs)
    out, ratios = launch.gated_sink_attention(*args)
    ref_out, ref_ratios = gated_sink_attention_ref(*args)
    assert ratios.tolist() == ref_ratios.tolist() == [1.0]
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case,message", [
    ("one_scale", "give both k_scale and v_scale"),
    ("scale_without_8bit", "must be int8 or float8_e4m3fn"),
    ("8bit_without_scale", "8-bit pools need k_scale and v_scale"),
    ("scale_shape", "must be float32 [3, 8, 2]"),
    ("mixed_pools", "must share a dtype"),
])
def test_bad_page_inputs(case, message):
    q, k, v = (torch.randn(8, 2, 16) for _ in range(3))
    kq, ks = quantise_page(torch.randn(3, 8, 2, 16), "int8")
    vq, vs = quantise_page(torch.randn(3, 8, 2, 16), "int8")
    ids = (torch.tensor([0]), torch.tensor([1]))
    bad = {
        "one_scale": (kq, vq, ks, None),
        "scale_without_8bit": (kq.float(), vq.float(), ks, vs),
        "8bit_without_scale": (kq, vq, None, None),
        "scale_shape": (kq, vq, ks[:, :4], vs),
        "mixed_pools": (kq, vq.float(), ks, vs),
    }[case]
    with pytest.raises(DysinkError, match=message.replace("[", r"\[").replace("]", r"\]")):
        launch.gated_sink_attention(q, k, v, bad[0], bad[1], *ids, 0.5, True, 0, bad[2], bad[3])
