"""GatedSinkAttention reference: against an independent per-entry formulation, and hand-worked gates."""

from __future__ import annotations

import pytest
import torch

from dysink_deploy.ops.gated_sink_attention import gated_sink_attention, gated_sink_attention_ref


def naive(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, threshold, bf16):
    """Concatenate like the original cache; gate each entry on its own with mean-of-dots scores."""
    q64 = q.double()
    local_k = torch.cat([k_pool[i] for i in local_ids.tolist() if i >= 0] + [k_cur]).double()
    local_v = torch.cat([v_pool[i] for i in local_ids.tolist() if i >= 0] + [v_cur]).double()
    qbar = q64.mean(0)
    s_loc = torch.einsum("hd,khd->hk", qbar, local_k).mean(-1)
    keys, vals, ratios = [], [], []
    for i in sink_ids.tolist():
        if i < 0:
            ratios.append(0.0)
            continue
        ek, ev = k_pool[i], v_pool[i]
        if bf16:
            ek, ev = ek.to(torch.bfloat16), ev.to(torch.bfloat16)
        ek, ev = ek.double(), ev.double()
        r = (torch.einsum("hd,khd->hk", qbar, ek).mean(-1) > s_loc).double().mean().item()
        ratios.append(r)
        if not r > threshold:
            keys.append(ek)
            vals.append(ev)
    kk, vv = torch.cat(keys + [local_k]), torch.cat(vals + [local_v])
    att = torch.softmax(torch.einsum("qhd,khd->hqk", q64, kk) / q.shape[-1] ** 0.5, -1)
    return torch.einsum("hqk,khd->qhd", att, vv), torch.tensor(ratios, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(5, 3, 6), (13, 2, 10), (1, 1, 4)])
def test_matches_naive_on_odd_shapes(seed, shape):
    L, H, D = shape
    g = torch.Generator().manual_seed(seed)
    P = 7
    q, k, v = (torch.randn(L, H, D, generator=g) for _ in range(3))
    kp, vp = torch.randn(P, L, H, D, generator=g), torch.randn(P, L, H, D, generator=g)
    local_ids = torch.tensor([2, -1, 5])
    sink_ids = torch.tensor([4, -1, 1, 6])
    for threshold in (0.0, 0.5, 1.0):
        out, ratios = gated_sink_attention_ref(q, k, v, kp, vp, local_ids, sink_ids, threshold, True)
        ref_out, ref_ratios = naive(q, k, v, kp, vp, local_ids, sink_ids, threshold, True)
        torch.testing.assert_close(ratios.double(), ref_ratios)
        # fp32 attention vs fp64: error of a few fp32 ulps of the output scale.
        torch.testing.assert_close(out.double(), ref_out, atol=2e-6, rtol=2e-6)


def test_custom_op_equals_reference():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(6, 2, 8, generator=g) for _ in range(3))
    kp, vp = torch.randn(4, 6, 2, 8, generator=g), torch.randn(4, 6, 2, 8, generator=g)
    a = gated_sink_attention(q, k, v, kp, vp, torch.tensor([0, -1]), torch.tensor([3, 2]), 0.5, True)
    b = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([0, -1]), torch.tensor([3, 2]), 0.5, True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _hand_case():
    """4 heads, head dim 2, 2 tokens, every query (1, 0) -> qbar_h = (1, 0).

    Current block keys have first component 1 -> s_loc(h) = 1 in every head.
    Sink page keys' first components per head: 2, 2, 2, 0 -> 3 of 4 heads
    prefer the sink: ratio exactly 0.75.
    """
    L, H, D = 2, 4, 2
    q = torch.zeros(L, H, D)
    q[..., 0] = 1.0
    k_cur = torch.zeros(L, H, D)
    k_cur[..., 0] = 1.0
    v_cur = torch.zeros(L, H, D)
    k_pool = torch.zeros(2, L, H, D)
    k_pool[1, :, :, 0] = torch.tensor([2.0, 2.0, 2.0, 0.0])
    v_pool = torch.zeros(2, L, H, D)
    v_pool[1] = 5.0  # visible in the output iff the sink is kept
    return q, k_cur, v_cur, k_pool, v_pool


def test_hand_worked_ratio_and_strict_threshold():
    q, k, v, kp, vp = _hand_case()
    none = torch.tensor([-1])
    _, ratios = gated_sink_attention_ref(q, k, v, kp, vp, none, torch.tensor([1]), 0.75, False)
    assert ratios.tolist() == [0.75]
    kept, _ = gated_sink_attention_ref(q, k, v, kp, vp, none, torch.tensor([1]), 0.75, False)
    dropped, _ = gated_sink_attention_ref(q, k, v, kp, vp, none, torch.tensor([1]), 0.7, False)
    assert kept.abs().max() > 0, "ratio == threshold keeps the sink (strict >)"
    assert dropped.abs().max() == 0, "ratio > threshold drops it: only the zero-valued current block remains"


def test_tie_is_not_anomalous():
    q, k, v, kp, vp = _hand_case()
    kp[1, :, :, 0] = 1.0  # s_e == s_loc in every head
    _, ratios = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([-1]), torch.tensor([1]), 0.0, False)
    assert ratios.tolist() == [0.0]


def test_empty_slots_contribute_nothing():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 2, 4, generator=g) for _ in range(3))
    kp, vp = torch.randn(3, 3, 2, 4, generator=g), torch.randn(3, 3, 2, 4, generator=g)
    out, ratios = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([-1, -1]), torch.tensor([-1, -1]), 0.5, True)
    alone = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / 2.0, -1)
    torch.testing.assert_close(out, torch.einsum("hqk,khd->qhd", alone, v))
    assert ratios.tolist() == [0.0, 0.0]
    # The local window average counts only real pages: an empty slot must not dilute s_loc.
    with_local, _ = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([-1, 0]), torch.tensor([-1]), 0.5, True)
    same, _ = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([0, -1]), torch.tensor([-1]), 0.5, True)
    torch.testing.assert_close(with_local, same)


def test_sink_kv_bf16_rounds_sinks_only():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(4, 2, 8, generator=g) for _ in range(3))
    kp, vp = torch.randn(3, 4, 2, 8, generator=g), torch.randn(3, 4, 2, 8, generator=g)
    local, sink = torch.tensor([0]), torch.tensor([2])
    rounded_kp, rounded_vp = kp.clone(), vp.clone()
    rounded_kp[2] = kp[2].to(torch.bfloat16).float()
    rounded_vp[2] = vp[2].to(torch.bfloat16).float()
    a, _ = gated_sink_attention_ref(q, k, v, kp, vp, local, sink, 1.0, True)
    b, _ = gated_sink_attention_ref(q, k, v, rounded_kp, rounded_vp, local, sink, 1.0, False)
    c, _ = gated_sink_attention_ref(q, k, v, kp, vp, local, sink, 1.0, False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0


def test_fixed_sink_slots_are_not_rounded():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(4, 2, 8, generator=g) for _ in range(3))
    kp, vp = torch.randn(3, 4, 2, 8, generator=g), torch.randn(3, 4, 2, 8, generator=g)
    sink = torch.tensor([1, 2])                   # slot 0 = fixed sink (page 1), slot 1 = retrieved (page 2)
    rk, rv = kp.clone(), vp.clone()
    rk[2], rv[2] = kp[2].to(torch.bfloat16).float(), vp[2].to(torch.bfloat16).float()
    a, _ = gated_sink_attention_ref(q, k, v, kp, vp, torch.tensor([0]), sink, 1.0, True, fixed_sinks=1)
    b, _ = gated_sink_attention_ref(q, k, v, rk, rv, torch.tensor([0]), sink, 1.0, False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
