"""Triton GatedSinkAttention (interpreted on CPU) against the PyTorch reference.

Ratios must be identical to the reference's. Outputs follow the
flash-attention rule (STYLE.md): against a float64 evaluation of the same
inputs, the kernel's max error may be at most 2x the reference's own max
error at the same precision (the reference computes in float32 and rounds
its output to the input dtype). Measured ratios (kernel / reference error)
are written down in plugins/README.md.
"""

from __future__ import annotations

import pytest
import torch

from dysink_deploy.errors import DysinkError
from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_ref
from dysink_deploy.plugins import launch
from dysink_deploy.plugins.variants import GATE_SPLITS, Tiles, attention_tiles

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def float64_attention(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, threshold, sink_kv_bf16, fixed_sinks):
    """Per-slot float64 evaluation: each sink gated on its own, then one softmax over the kept keys."""
    def page(pool, i, slot):
        x = pool[i]
        if sink_kv_bf16 and slot is not None and slot >= fixed_sinks:
            x = x.to(torch.bfloat16).to(pool.dtype)
        return x.double()

    q64 = q.double()
    loc_k = [page(k_pool, i, None) for i in local_ids.tolist() if i >= 0] + [k_cur.double()]
    loc_v = [page(v_pool, i, None) for i in local_ids.tolist() if i >= 0] + [v_cur.double()]
    qbar = q64.mean(0)
    s_loc = (qbar * torch.cat(loc_k).mean(0)).sum(-1)
    keys, vals, ratios = [], [], []
    for slot, i in enumerate(sink_ids.tolist()):
        if i < 0:
            ratios.append(0.0)
            continue
        ek, ev = page(k_pool, i, slot), page(v_pool, i, slot)
        r = ((qbar * ek.mean(0)).sum(-1) > s_loc).double().mean().item()
        ratios.append(r)
        if not r > threshold:
            keys.append(ek)
            vals.append(ev)
    kk, vv = torch.cat(keys + loc_k), torch.cat(vals + loc_v)
    att = torch.softmax(torch.einsum("qhd,khd->hqk", q64, kk) / q.shape[-1] ** 0.5, -1)
    return torch.einsum("hqk,khd->qhd", att, vv), ratios


def _inputs(seed, tokens, heads, dim, pages, dtype):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(tokens, heads, dim, generator=g).to(dtype) for _ in range(3))
    kp = torch.randn(pages, tokens, heads, dim, generator=g).to(dtype)
    vp = torch.randn(pages, tokens, heads, dim, generator=g).to(dtype)
    return q, k, v, kp, vp


def _check(args, tiles=None, gate_splits=None):
    """Run kernel, reference and float64; assert identical ratios and the 2x error rule. -> error ratio."""
    out, ratios = launch.gated_sink_attention(*args, tiles=tiles, gate_splits=gate_splits)
    ref_out, ref_ratios = gated_sink_attention_ref(*args)
    exact, exact_ratios = float64_attention(*args)
    assert ratios.tolist() == ref_ratios.tolist()
    assert ratios.tolist() == [float(torch.tensor(r, dtype=torch.float32)) for r in exact_ratios]
    assert out.dtype == args[0].dtype and out.shape == args[0].shape
    err = (out.double() - exact).abs().max().item()
    ref_err = (ref_out.double() - exact).abs().max().item()
    assert err <= 2 * ref_err, f"kernel error {err:.3g} > 2 x reference error {ref_err:.3g}"
    return err / ref_err


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", [(37, 3, 16), (20, 2, 128)], ids=["37x3x16", "20x2x128"])
def test_random_odd_shapes(dtype, shape):
    tokens, heads, dim = shape
    q, k, v, kp, vp = _inputs(0, tokens, heads, dim, 7, dtype)
    # slot 0 is a fixed sink (not rounded), an empty slot in each list; threshold 0.5 drops some.
    args = (q, k, v, kp, vp, torch.tensor([2, -1, 5]), torch.tensor([4, -1, 1, 6]), 0.5, True, 1)
    _check(args, tiles=Tiles(16, 16, 4, 1), gate_splits=3)   # 37 tokens: splits of 13, 13, 11


@pytest.mark.parametrize("arch", [80, 90, 100])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_gpu_tile_configs(arch, dtype):
    """The tiles each architecture compiles with, on a block longer than one row tile (ragged tail)."""
    q, k, v, kp, vp = _inputs(1, 150, 2, 128, 4, dtype)
    args = (q, k, v, kp, vp, torch.tensor([0, 3]), torch.tensor([1, 2]), 0.5, True, 0)
    _check(args, tiles=attention_tiles(arch, 128, str(dtype).split(".")[-1]), gate_splits=GATE_SPLITS)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_every_slot_empty(dtype):
    q, k, v, kp, vp = _inputs(2, 19, 2, 16, 3, dtype)
    empty = torch.tensor([-1, -1])
    args = (q, k, v, kp, vp, empty, empty, 0.5, True, 0)
    _check(args)
    out, ratios = launch.gated_sink_attention(*args)
    assert ratios.tolist() == [0.0, 0.0]
    alone, _ = launch.gated_sink_attention(q, k, v, kp, vp, empty, torch.zeros(0, dtype=torch.int64), 0.5, True)
    torch.testing.assert_close(out, alone, rtol=0, atol=0)


def test_no_sink_slots_at_all():
    """A stream config with top_k 0 and no fixed sink: sink_ids is empty, the gate is not launched."""
    q, k, v, kp, vp = _inputs(3, 23, 2, 32, 3, torch.float32)
    args = (q, k, v, kp, vp, torch.tensor([1, -1]), torch.zeros(0, dtype=torch.int64), 0.5, True, 0)
    out, ratios = launch.gated_sink_attention(*args)
    ref, _ = gated_sink_attention_ref(*args)
    assert ratios.shape == (0,)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_all_sinks_dropped_equals_no_sinks(dtype):
    q, k, v, kp, vp = _inputs(4, 21, 4, 16, 5, dtype)
    local = torch.tensor([0, 1])
    sinks = torch.tensor([3, 4])
    args = (q, k, v, kp, vp, local, sinks, -1.0, True, 0)                 # every ratio > -1
    _check(args)
    out, ratios = launch.gated_sink_attention(*args)
    without, _ = launch.gated_sink_attention(q, k, v, kp, vp, local, torch.tensor([-1, -1]), -1.0, True)
    assert ratios.tolist() == gated_sink_attention_ref(*args)[1].tolist()
    torch.testing.assert_close(out, without, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("local", [[0, 1], [0, 1, 2], [0, -1, 2]], ids=["2-pages", "3-pages", "3-slots-1-empty"])
def test_identical_pages_tie_like_the_reference(dtype, local):
    """Every page equal to the current block's keys: s_e == s_loc exactly in the reference, so
    no head prefers the sink and every ratio is 0; the kernel must find the same exact ties for
    any number of local pages. Values are bf16-representable in every dtype, so the float32
    sums are exact in any order (summation order is the only freedom the kernel has: its means
    are correctly rounded divisions, like the reference's)."""
    g = torch.Generator().manual_seed(11)
    tokens, heads, dim = 23, 8, 32
    q = torch.randn(tokens, heads, dim, generator=g).to(torch.bfloat16).to(dtype)
    page = torch.randn(tokens, heads, dim, generator=g).to(torch.bfloat16).to(dtype)
    kp = page[None].repeat(4, 1, 1, 1).contiguous()
    vp = torch.randn(4, tokens, heads, dim, generator=g).to(dtype)
    args = (q, page.clone(), page.clone(), kp, vp, torch.tensor(local), torch.tensor([3, 1]), 0.0, False, 0)
    _, ratios = launch.gated_sink_attention(*args)
    _, ref_ratios = gated_sink_attention_ref(*args)
    assert ratios.tolist() == ref_ratios.tolist() == [0.0, 0.0]


def test_one_token_one_head_one_sink():
    """Sizes of 1: the kernels' integer arguments are never specialized into constants."""
    q, k, v, kp, vp = _inputs(6, 1, 1, 16, 3, torch.float32)
    _check((q, k, v, kp, vp, torch.tensor([0]), torch.tensor([1]), 0.5, True, 0))


def _hand_case():
    """4 heads, head dim 16, 2 tokens; qbar_h = e0; s_loc = 1 in every head; the sink's
    first key component per head is 2, 2, 2, 0: ratio exactly 0.75 (worked out by hand)."""
    tokens, heads, dim = 2, 4, 16
    q = torch.zeros(tokens, heads, dim)
    q[..., 0] = 1.0
    k_cur = torch.zeros(tokens, heads, dim)
    k_cur[..., 0] = 1.0
    v_cur = torch.zeros(tokens, heads, dim)
    k_pool = torch.zeros(2, tokens, heads, dim)
    k_pool[1, :, :, 0] = torch.tensor([2.0, 2.0, 2.0, 0.0])
    v_pool = torch.zeros(2, tokens, heads, dim)
    v_pool[1] = 5.0
    return q, k_cur, v_cur, k_pool, v_pool


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_ratio_exactly_at_threshold_is_kept(dtype):
    q, k, v, kp, vp = (t.to(dtype) for t in _hand_case())   # 0, 1, 2 and 5 are exact in every dtype
    none, sink = torch.tensor([-1]), torch.tensor([1])
    kept, ratios = launch.gated_sink_attention(q, k, v, kp, vp, none, sink, 0.75, False)
    dropped, _ = launch.gated_sink_attention(q, k, v, kp, vp, none, sink, 0.7, False)
    assert ratios.tolist() == [0.75]
    assert kept.abs().max() > 0, "ratio == threshold keeps the sink (strict >)"
    assert dropped.abs().max() == 0, "ratio > threshold drops it: only the zero-valued current block remains"


def test_tie_is_not_anomalous():
    q, k, v, kp, vp = _hand_case()
    kp[1, :, :, 0] = 1.0                                  # s_e == s_loc in every head
    _, ratios = launch.gated_sink_attention(q, k, v, kp, vp, torch.tensor([-1]), torch.tensor([1]), 0.0, False)
    assert ratios.tolist() == [0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_bf16_rounding_of_retrieved_sinks_only(dtype):
    """Rounding inside the kernel == rounding the pool beforehand, bit for bit; fixed sinks untouched."""
    q, k, v, kp, vp = _inputs(5, 12, 2, 16, 3, dtype)
    sink = torch.tensor([1, 2])                          # slot 0 fixed sink (page 1), slot 1 retrieved (page 2)
    rk, rv = kp.clone(), vp.clone()
    rk[2], rv[2] = kp[2].to(torch.bfloat16).to(dtype), vp[2].to(torch.bfloat16).to(dtype)
    a, ra = launch.gated_sink_attention(q, k, v, kp, vp, torch.tensor([0]), sink, 1.0, True, 1)
    b, rb = launch.gated_sink_attention(q, k, v, rk, rv, torch.tensor([0]), sink, 1.0, False, 0)
    c, _ = launch.gated_sink_attention(q, k, v, kp, vp, torch.tensor([0]), sink, 1.0, False, 0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ra.tolist() == rb.tolist()
    assert (a.float() - c.float()).abs().max() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_page_ids_outside_the_pool_are_empty_slots(dtype):
    """An id >= P or < -1 (never from the runtime; TensorRT may time the plugin on arbitrary buffers)
    reads nothing: the slot is empty in every kernel (gate sums, decision, attention), exactly like
    -1, and the reference applies the same rule."""
    pages = 5
    q, k, v, kp, vp = _inputs(7, 19, 2, 16, pages, dtype)
    wild_local, wild_sink = torch.tensor([pages, 3, -2, 2 ** 40]), torch.tensor([1, pages + 7, -9, 4])
    tame_local, tame_sink = torch.tensor([-1, 3, -1, -1]), torch.tensor([1, -1, -1, 4])
    wild = (q, k, v, kp, vp, wild_local, wild_sink, 0.5, True, 1)
    tame = (q, k, v, kp, vp, tame_local, tame_sink, 0.5, True, 1)
    out, ratios = launch.gated_sink_attention(*wild)
    tame_out, tame_ratios = launch.gated_sink_attention(*tame)
    torch.testing.assert_close(out, tame_out, rtol=0, atol=0)
    assert ratios.tolist() == tame_ratios.tolist() and ratios[1:3].tolist() == [0.0, 0.0]
    ref_out, ref_ratios = gated_sink_attention_ref(*wild)
    ref_tame_out, ref_tame_ratios = gated_sink_attention_ref(*tame)
    torch.testing.assert_close(ref_out, ref_tame_out, rtol=0, atol=0)
    assert ratios.tolist() == ref_ratios.tolist() == ref_tame_ratios.tolist()
    _check(tame)
    # Every id out of range: the current block alone, as with every slot -1.
    none = torch.tensor([pages, -3])
    alone, alone_ratios = launch.gated_sink_attention(q, k, v, kp, vp, none, none.flip(0), 0.5, True)
    empty, _ = launch.gated_sink_attention(q, k, v, kp, vp, torch.tensor([-1, -1]), torch.tensor([-1, -1]), 0.5, True)
    torch.testing.assert_close(alone, empty, rtol=0, atol=0)
    assert alone_ratios.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad, message", [
    (dict(local_ids=torch.tensor([0], dtype=torch.int32)), "local_ids must be int64"),
    (dict(k_cur=torch.zeros(5, 2, 16)), "k_cur must have q's shape"),
    (dict(k_pool=torch.zeros(2, 4, 2, 16, dtype=torch.float16)), "k_pool and v_pool must share a dtype"),
    (dict(k_pool=torch.zeros(2, 4, 2, 16, dtype=torch.float16), v_pool=torch.zeros(2, 4, 2, 16, dtype=torch.float16)),
     "the pools must have q's dtype torch.float32 or bfloat16"),
    (dict(k_cur=torch.zeros(4, 2, 16, dtype=torch.float16)), "k_cur and v_cur must have q's dtype"),
    (dict(k_scale=torch.ones(2, 4, 2)), "give both k_scale and v_scale"),
    (dict(q=torch.zeros(4, 2, 8), k_cur=torch.zeros(4, 2, 8), v_cur=torch.zeros(4, 2, 8),
          k_pool=torch.zeros(2, 4, 2, 8), v_pool=torch.zeros(2, 4, 2, 8)), "head dims 16..128"),
    (dict(fixed_sinks=3), "fixed_sinks must be an integer in"),
    (dict(q=torch.zeros(0, 2, 16), k_cur=torch.zeros(0, 2, 16), v_cur=torch.zeros(0, 2, 16),
          k_pool=torch.zeros(2, 0, 2, 16), v_pool=torch.zeros(2, 0, 2, 16)), "at least one token and one head"),
])
def test_bad_inputs_say_what_is_wrong(bad, message):
    args = dict(q=torch.zeros(4, 2, 16), k_cur=torch.zeros(4, 2, 16), v_cur=torch.zeros(4, 2, 16),
                k_pool=torch.zeros(2, 4, 2, 16), v_pool=torch.zeros(2, 4, 2, 16), local_ids=torch.tensor([0]),
                sink_ids=torch.tensor([1]), threshold=0.5, sink_kv_bf16=True, fixed_sinks=0)
    args.update(bad)
    with pytest.raises(DysinkError, match=message):
        launch.gated_sink_attention(**args)
