"""The ONNX function bodies of the custom ops, run by ONNX Runtime, against the PyTorch references.

Each test builds a one-node model (`dysink::<Op>` + the attached body) on odd
shapes (5 tokens, 3 heads, head dim 6; bank of 7 x 5-d features) and compares
with `gated_sink_attention_ref` / `retrieve_sinks_ref`, plus hand-worked
expectations for the gate threshold edge and the retrieval rules.

Tolerances: fp32 body vs fp32 reference differs only by summation order
(measured <= 2.4e-7 on O(1) outputs, checked at 1e-6). fp16: the body's error
against the fp32 reference must be at most 2x the fp16 reference's own error
(+ 1e-6), the project's rule (STYLE.md). Integer outputs and gate ratios
(multiples of 1/heads) must match exactly.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

ort = pytest.importorskip("onnxruntime")
from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_ref  # noqa: E402
from dysink_deploy.ops.onnx_functions import OPSET, function_protos  # noqa: E402
from dysink_deploy.ops.retrieve_sinks import retrieve_sinks_ref  # noqa: E402

L, H, D, P = 5, 3, 6, 4
_ET = {torch.float32: TP.FLOAT, torch.float16: TP.FLOAT16}


def _session(op_type, inputs, outputs, **attrs):
    ins = [helper.make_tensor_value_info(n, et, s) for n, et, s in inputs]
    outs = [helper.make_tensor_value_info(n, et, s) for n, et, s in outputs]
    node = helper.make_node(op_type, [i.name for i in ins], [o.name for o in outs], domain="dysink",
                            plugin_namespace="dysink", plugin_version="1", **attrs)
    model = helper.make_model(helper.make_graph([node], op_type, ins, outs),
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("dysink", 1)],
                              functions=function_protos())
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def gsa_session(dtype=torch.float32, threshold=0.5, sink_kv_bf16=0, heads=H, s_loc=2, s_sink=3, fixed_sinks=None):
    et = _ET[dtype]
    inputs = [("q", et, [L, heads, D]), ("k_cur", et, [L, heads, D]), ("v_cur", et, [L, heads, D]),
              ("k_pool", et, [P, L, heads, D]), ("v_pool", et, [P, L, heads, D]),
              ("local_ids", TP.INT64, [s_loc]), ("sink_ids", TP.INT64, [s_sink])]
    outputs = [("out", et, [L, heads, D]), ("ratios", TP.FLOAT, [s_sink])]
    extra = {} if fixed_sinks is None else {"fixed_sinks": fixed_sinks}  # None: rely on the default (0)
    return _session("GatedSinkAttention", inputs, outputs, threshold=threshold, sink_kv_bf16=sink_kv_bf16, **extra)


def run_gsa(sess, args):
    names = ["q", "k_cur", "v_cur", "k_pool", "v_pool", "local_ids", "sink_ids"]
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args)})


def random_gsa_args(seed, local_ids, sink_ids, heads=H):
    g = torch.Generator().manual_seed(seed)
    q, kc, vc = (torch.randn(L, heads, D, generator=g) for _ in range(3))
    kp, vp = (torch.randn(P, L, heads, D, generator=g) for _ in range(2))
    return [q, kc, vc, kp, vp, torch.tensor(local_ids), torch.tensor(sink_ids)]


ID_CASES = [
    ([1, -1], [0, 3, -1]),     # some empty slots
    ([-1, -1], [-1, -1, -1]),  # everything empty: attention over the current block only
    ([2, 2], [1, 1, 3]),       # duplicated pages
    ([0, 3], [3, 0, 2]),       # a page both local and sink
    ([4, 1], [-2, 2, 9]),      # ids outside [0, P) (P = 4): empty slots, like -1
]


def test_page_ids_outside_the_pool_are_empty_slots():
    """ORT (the function body) and the reference treat an id >= P or < -1 exactly as -1."""
    sess = gsa_session(threshold=0.5)
    args = random_gsa_args(5, [P, 2], [1, -7, P + 3])
    same = args[:5] + [torch.tensor([-1, 2]), torch.tensor([1, -1, -1])]
    out, ratios = run_gsa(sess, args)
    out_empty, ratios_empty = run_gsa(sess, same)
    np.testing.assert_array_equal(out, out_empty)
    np.testing.assert_array_equal(ratios, ratios_empty)
    assert ratios[1:].tolist() == [0.0, 0.0]
    ref = gated_sink_attention_ref(*args, 0.5, False)
    ref_empty = gated_sink_attention_ref(*same, 0.5, False)
    torch.testing.assert_close(ref[0], ref_empty[0], rtol=0, atol=0)
    assert ref[1].tolist() == ref_empty[1].tolist() == ratios.tolist()
    np.testing.assert_allclose(out, ref[0].numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fixed_sinks", [None, 1, 2])
@pytest.mark.parametrize("sink_kv_bf16", [0, 1])
@pytest.mark.parametrize("local_ids,sink_ids", ID_CASES)
def test_gated_sink_attention_fp32_matches_reference(local_ids, sink_ids, sink_kv_bf16, fixed_sinks):
    sess = gsa_session(threshold=0.5, sink_kv_bf16=sink_kv_bf16, fixed_sinks=fixed_sinks)
    for seed in range(3):
        args = random_gsa_args(seed, local_ids, sink_ids)
        ref_out, ref_ratios = gated_sink_attention_ref(*args, 0.5, bool(sink_kv_bf16), fixed_sinks or 0)
        out, ratios = run_gsa(sess, args)
        np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(ratios, ref_ratios.numpy())
        assert ratios.dtype == np.float32


@pytest.mark.parametrize("local_ids,sink_ids", ID_CASES)
def test_gated_sink_attention_fp16_within_twice_torch_fp16_error(local_ids, sink_ids):
    sess = gsa_session(torch.float16, threshold=0.5, sink_kv_bf16=1)
    for seed in range(3):
        args = random_gsa_args(10 + seed, local_ids, sink_ids)
        half = [a.half() if a.is_floating_point() else a for a in args]
        ref_out, ref_ratios = gated_sink_attention_ref(*[a.float() if a.is_floating_point() else a for a in half],
                                                       0.5, True)
        torch_out, torch_ratios = gated_sink_attention_ref(*half, 0.5, True)
        out, ratios = run_gsa(sess, half)
        assert out.dtype == np.float16
        torch_err = (torch_out.float() - ref_out).abs().max().item()
        ort_err = np.abs(out.astype(np.float32) - ref_out.numpy()).max()
        assert ort_err <= 2 * torch_err + 1e-6, (ort_err, torch_err)
        np.testing.assert_array_equal(ratios, ref_ratios.numpy())


def _gate_case(heads, prefer):
    """Hand-made inputs where sink page 0 is preferred by exactly the heads in `prefer`.

    Every query is e0 in every head, so qbar_h = e0. Local and current keys have
    component 0 = 0, so s_loc(h) = 0. The sink page's keys have component 0 = +1
    for preferring heads and 0 (a tie: strict '>' does not count it) otherwise.
    """
    q = torch.zeros(L, heads, D)
    q[..., 0] = 1.0
    g = torch.Generator().manual_seed(7)
    kc, vc = torch.randn(L, heads, D, generator=g), torch.randn(L, heads, D, generator=g)
    kc[..., 0] = 0.0
    kp, vp = torch.randn(P, L, heads, D, generator=g), torch.randn(P, L, heads, D, generator=g)
    kp[..., 0] = 0.0
    for h in prefer:
        kp[2, :, h, 0] = 1.0
    return [q, kc, vc, kp, vp, torch.tensor([1, -1]), torch.tensor([2, -1, -1])]


@pytest.mark.parametrize("heads,prefer,threshold,dropped", [
    (5, [0, 1, 2, 3], 0.8, False),   # ratio 0.8 == threshold 0.8 (released): kept, strict '>'
    (5, [0, 1, 2, 3], 0.79, True),   # just below: dropped
    (5, [0, 1, 2, 3, 4], 0.8, True),
    (3, [0, 2], 2 / 3, False),       # ratio 2/3 == threshold 2/3 (both float32)
    (3, [0, 2], 0.66, True),
    (3, [], 0.0, False),             # ties everywhere: no head prefers, ratio 0 == threshold 0
])
def test_gate_threshold_edges(heads, prefer, threshold, dropped):
    args = _gate_case(heads, prefer)
    sess = gsa_session(threshold=threshold, heads=heads, s_loc=2, s_sink=3)
    out, ratios = run_gsa(sess, args)
    expected_ratio = np.float32(len(prefer)) / np.float32(heads)
    np.testing.assert_array_equal(ratios, np.array([expected_ratio, 0, 0], dtype=np.float32))
    ref_out, ref_ratios = gated_sink_attention_ref(*args, threshold, False)
    np.testing.assert_array_equal(ratios, ref_ratios.numpy())
    np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-6, rtol=0)
    # Whether the sink was used: compare with the same call without it.
    no_sink = args[:6] + [torch.tensor([-1, -1, -1])]
    without, _ = gated_sink_attention_ref(*no_sink, threshold, False)
    assert np.allclose(out, without.numpy(), atol=1e-6) == dropped


# ---------------------------------------------------------------------------- RetrieveSinks
C, F, Q = 7, 5, 3


def rs_session(k, sink_size=0, capacity=C):
    inputs = [("bank_feats", TP.FLOAT, [capacity, F]), ("bank_start", TP.INT64, [capacity]),
              ("queries", TP.FLOAT, [Q, F]), ("query_valid", TP.INT32, [Q]),
              ("current_start", TP.INT64, []), ("window_frames", TP.INT64, [])]
    outputs = [("slots", TP.INT64, [k]), ("scores", TP.FLOAT, [k])]
    return _session("RetrieveSinks", inputs, outputs, sink_size=sink_size, k=k)


def run_rs(sess, args):
    names = ["bank_feats", "bank_start", "queries", "query_valid", "current_start", "window_frames"]
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args)})


def rs_args(feats, starts, queries, valid, current_start, window):
    return [torch.as_tensor(feats, dtype=torch.float32), torch.as_tensor(starts, dtype=torch.int64),
            torch.as_tensor(queries, dtype=torch.float32), torch.as_tensor(valid, dtype=torch.int32),
            torch.tensor(current_start), torch.tensor(window)]


def _check_rs(sess, args, sink_size, k, slots=None, scores=None):
    got_slots, got_scores = run_rs(sess, args)
    ref_slots, ref_scores = retrieve_sinks_ref(*args, sink_size, k)
    np.testing.assert_array_equal(got_slots, ref_slots.numpy())
    np.testing.assert_allclose(got_scores, ref_scores.numpy(), atol=1e-6, rtol=0)
    if slots is not None:
        np.testing.assert_array_equal(got_slots, slots)
    if scores is not None:
        np.testing.assert_allclose(got_scores, scores, atol=1e-6)
    return got_slots, got_scores


def test_retrieve_random_banks_match_reference():
    g = torch.Generator().manual_seed(3)
    for k in (1, 2, 4):
        sess = rs_session(k)
        for _ in range(5):
            feats = torch.nn.functional.normalize(torch.randn(C, F, generator=g), dim=-1)
            starts = torch.randint(-1, 12, (C,), generator=g) * 3
            starts = torch.where(starts < 0, -1, starts)
            queries = torch.nn.functional.normalize(torch.randn(Q, F, generator=g), dim=-1)
            valid = torch.rand(Q, generator=g) < 0.7
            _check_rs(sess, rs_args(feats, starts, queries, valid, 30, 9), 0, k)


def test_retrieve_hand_worked():
    # Features are basis vectors scaled; the query mean is e0 (only valid queries count).
    feats = np.zeros((C, F), np.float32)
    feats[:, 0] = [0.9, 0.5, 0.9, 0.7, 0.95, 0.2, 0.8]
    starts = [0, 3, 6, 21, 24, -1, 12]
    queries = np.zeros((Q, F), np.float32)
    queries[0, 0] = queries[1, 0] = 1.0
    queries[2, 1] = 1.0                      # invalid query: ignored
    valid = [True, True, False]
    # current_start 27, window 9: starts in [18, 27) are excluded (21, 24); -1 is empty.
    # eligible: slot0 0.9, slot1 0.5, slot2 0.9, slot6 0.8 -> tie 0.9 keeps slot 0 first.
    _check_rs(rs_session(3), rs_args(feats, starts, queries, valid, 27, 9), 0, 3,
              slots=[0, 2, 6], scores=[0.9, 0.9, 0.8])
    # sink_size 3: frames < 3 (slot 0) not eligible either.
    _check_rs(rs_session(3, sink_size=3), rs_args(feats, starts, queries, valid, 27, 9), 3, 3,
              slots=[2, 6, 1], scores=[0.9, 0.8, 0.5])
    # Lower bound is inclusive, upper exclusive: window 15 from 27 excludes [12, 27) -> slot 6 too.
    _check_rs(rs_session(4), rs_args(feats, starts, queries, valid, 27, 15), 0, 4,
              slots=[0, 2, 1, -1], scores=[0.9, 0.9, 0.5, 0.0])


def test_retrieve_fewer_than_k_and_empty():
    feats = np.eye(C, F, dtype=np.float32)
    queries = np.ones((Q, F), np.float32) / np.sqrt(F)
    # k larger than the capacity: padded with -1.
    _check_rs(rs_session(9), rs_args(feats, [0, 3, -1, -1, -1, -1, -1], queries, [True] * Q, 30, 9), 0, 9,
              slots=[0, 1] + [-1] * 7, scores=[1 / np.sqrt(F)] * 2 + [0.0] * 7)
    # Empty bank.
    _check_rs(rs_session(2), rs_args(feats, [-1] * C, queries, [True] * Q, 30, 9), 0, 2,
              slots=[-1, -1], scores=[0.0, 0.0])
    # No valid query: nothing eligible.
    _check_rs(rs_session(2), rs_args(feats, [0, 3, 6, 9, 12, 15, 18], queries, [False] * Q, 30, 9), 0, 2,
              slots=[-1, -1], scores=[0.0, 0.0])


def test_retrieve_query_valid_is_int32_and_nonzero_counts():
    """query_valid is int32 (TensorRT plugin I/O cannot be bool): 1 valid, 0 not; ORT, the reference and
    the hand-worked answer agree, and any nonzero value counts as valid (weight 1, not its value)."""
    feats = np.zeros((C, F), np.float32)
    feats[:, 0], feats[:, 1] = [0.9, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0]
    queries = np.zeros((Q, F), np.float32)
    queries[0, 0], queries[1, 1] = 1.0, 1.0
    starts = [0, 3, 6, 9, 12, 15, 18]
    args = rs_args(feats, starts, queries, [1, 0, 0], 30, 9)
    assert args[3].dtype == torch.int32
    _check_rs(rs_session(2), args, 0, 2, slots=[0, 6], scores=[0.9, 0.6])
    # Two valid queries, one marked 2: the mean of e0 and e1 (not 2 * e1).
    _check_rs(rs_session(2), rs_args(feats, starts, queries, [1, 2, 0], 30, 9), 0, 2,
              slots=[0, 1], scores=[0.45, 0.45])


def test_retrieve_ties_keep_lower_slot_first():
    feats = np.tile(np.eye(1, F, dtype=np.float32), (C, 1))           # every entry identical
    queries = np.tile(np.eye(1, F, dtype=np.float32), (Q, 1))
    _check_rs(rs_session(4), rs_args(feats, [9, 0, 3, 6, 12, 15, 18], queries, [True] * Q, 30, 9), 0, 4,
              slots=[0, 1, 2, 3], scores=[1.0] * 4)


def test_function_protos_declare_opset_and_attributes():
    protos = {p.name: p for p in function_protos()}
    assert set(protos) == {"GatedSinkAttention", "GatedSinkAttentionQ8", "RetrieveSinks"}
    for name, p in protos.items():
        assert p.domain == "dysink"
        calls = [("dysink", 1)] if name == "GatedSinkAttentionQ8" else []   # its body calls GatedSinkAttention
        assert sorted((o.domain, o.version) for o in p.opset_import) == sorted([("", OPSET)] + calls)
    gsa = protos["GatedSinkAttention"]
    declared = set(gsa.attribute) | {a.name for a in gsa.attribute_proto}
    assert declared == {"threshold", "sink_kv_bf16", "fixed_sinks", "plugin_namespace", "plugin_version"}
    assert [a.i for a in gsa.attribute_proto if a.name == "fixed_sinks"] == [0], "fixed_sinks defaults to 0"
    assert set(protos["RetrieveSinks"].attribute) == {"sink_size", "k", "plugin_namespace", "plugin_version"}


@pytest.mark.parametrize("opset", [18, 20])
def test_bodies_hold_at_older_opsets(opset):
    """Stamped with an older opset, the bodies pass the full checker and ORT still equals the reference."""
    g = torch.Generator().manual_seed(opset)
    feats = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    start, valid = torch.tensor([0, 3, 6, -1, 12, 15]), torch.tensor([1, 1], dtype=torch.int32)
    ins = [helper.make_tensor_value_info("bank_feats", TP.FLOAT, [6, 8]),
           helper.make_tensor_value_info("bank_start", TP.INT64, [6]),
           helper.make_tensor_value_info("queries", TP.FLOAT, [2, 8]),
           helper.make_tensor_value_info("query_valid", TP.INT32, [2]),
           helper.make_tensor_value_info("current_start", TP.INT64, []),
           helper.make_tensor_value_info("window_frames", TP.INT64, [])]
    outs = [helper.make_tensor_value_info("slots", TP.INT64, [2]), helper.make_tensor_value_info("scores", TP.FLOAT, [2])]
    node = helper.make_node("RetrieveSinks", [i.name for i in ins], ["slots", "scores"], domain="dysink",
                            plugin_namespace="dysink", plugin_version="1", sink_size=0, k=2)
    model = helper.make_model(helper.make_graph([node], "r", ins, outs), ir_version=9,
                              opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("dysink", 1)],
                              functions=function_protos(opset))
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"bank_feats": feats.numpy(), "bank_start": start.numpy(), "queries": queries.numpy(),
                          "query_valid": valid.numpy(), "current_start": np.array(18), "window_frames": np.array(9)})
    ref = retrieve_sinks_ref(feats, start, queries, valid, torch.tensor(18), torch.tensor(9), 0, 2)
    assert got[0].tolist() == ref[0].tolist()
    np.testing.assert_allclose(got[1], ref[1].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="opsets 18..23"):
        function_protos(17)
