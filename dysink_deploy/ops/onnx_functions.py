"""ONNX model-local function bodies of the two custom ops, in standard ONNX ops.

An exported graph holds `dysink::GatedSinkAttention` / `dysink::RetrieveSinks`
nodes (domain version 1). TensorRT binds its plugin to them (the nodes carry
`plugin_namespace` / `plugin_version`); ONNX Runtime has no such op and
inlines these bodies instead, on any provider. Each body mirrors its PyTorch
reference (`gated_sink_attention_ref`, `retrieve_sinks_ref`) step by step:
same masking of empty slots (-1 or any id outside [0, P)), gate and softmax in float32, strict
`>` against the threshold, stable top-k (ONNX TopK puts the lower index first
on ties, like the reference's stable sort).

The bodies are type-polymorphic in the model dtype (Cast/CastLike only), so
one definition serves fp32, fp16 and bf16 graphs. TopK runs in float32: its
opset-11 schema has no bfloat16.

The bodies are written with opset-23 onnxscript ops but use only operators
whose semantics are the same from opset 18 to 23 (later versions only added
types): `function_protos(opset)` stamps them with the model's opset, and the
full ONNX checker validates every node's schema and types at that opset.

Imports onnxscript: used at export time only.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import opset23 as op

from .gated_sink_attention import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, PLUGIN_ATTRS

OPSET = 23            # the onnxscript opset the bodies are written in
MIN_OPSET = 18        # the oldest opset the bodies are valid at (ReduceMean / ReduceSum with axes inputs)
_FLOAT, _BOOL, _BF16 = onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.BFLOAT16
_FP16 = onnx.TensorProto.FLOAT16

dysink = onnxscript.values.Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)


@onnxscript.script(dysink, default_opset=op)
def GatedSinkAttention(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids,
                       threshold: float, sink_kv_bf16: int, fixed_sinks: int = 0):
    """q, k_cur, v_cur [L, H, D]; k_pool, v_pool [P, L, H, D]; local_ids [S_loc],
    sink_ids [S_sink] int64 (-1, or any id outside [0, P), = empty) -> out [L, H, D] (q's dtype),
    ratios float32 [S_sink]."""
    zero_id = op.Constant(value_int=0)
    pages = op.Shape(k_pool, start=0, end=1)                       # [1] = P
    local_valid = op.And(op.GreaterOrEqual(local_ids, zero_id), op.Less(local_ids, pages))
    sink_valid = op.And(op.GreaterOrEqual(sink_ids, zero_id), op.Less(sink_ids, pages))
    local_safe = op.Where(local_valid, local_ids, zero_id)         # empty slots read page 0 (masked later)
    sink_safe = op.Where(sink_valid, sink_ids, zero_id)
    # Pages are read in q's dtype: a no-op for model-precision pools, a cast for bf16 pages.
    k_local = op.CastLike(op.Gather(k_pool, local_safe, axis=0), q)              # [S_loc, L, H, D]
    v_local = op.CastLike(op.Gather(v_pool, local_safe, axis=0), q)
    k_sink_raw = op.CastLike(op.Gather(k_pool, sink_safe, axis=0), q)            # [S_sink, L, H, D]
    v_sink_raw = op.CastLike(op.Gather(v_pool, sink_safe, axis=0), q)
    # The reference rounds retrieved K/V through bf16 when asked; the first
    # `fixed_sinks` slots hold the fixed sink, which it never rounds.
    round_bf16 = op.Cast(op.Constant(value_int=sink_kv_bf16), to=_BOOL)
    slot = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(sink_ids), [0]), op.Constant(value_int=1))
    retrieved = op.And(round_bf16, op.GreaterOrEqual(slot, op.Constant(value_int=fixed_sinks)))
    round_mask = op.Unsqueeze(retrieved, [1, 2, 3])                # [S_sink, 1, 1, 1]
    k_sink = op.Where(round_mask, op.CastLike(op.Cast(k_sink_raw, to=_BF16), q), k_sink_raw)
    v_sink = op.Where(round_mask, op.CastLike(op.Cast(v_sink_raw, to=_BF16), q), v_sink_raw)

    # -- gate (gate_ratios), float32 -------------------------------------------------
    qf = op.Cast(q, to=_FLOAT)
    tokens = op.Cast(op.Shape(q, start=0, end=1), to=_FLOAT)       # [1]
    qbar = op.ReduceMean(qf, [0], keepdims=0)                      # [H, D]
    local_w = op.Cast(local_valid, to=_FLOAT)                      # [S_loc]
    local_sums = op.ReduceSum(op.Cast(k_local, to=_FLOAT), [1], keepdims=0)          # [S_loc, H, D]
    loc_sum = op.Add(op.ReduceSum(op.Mul(local_sums, op.Unsqueeze(local_w, [1, 2])), [0], keepdims=0),
                     op.ReduceSum(op.Cast(k_cur, to=_FLOAT), [0], keepdims=0))        # [H, D]
    one = op.Constant(value_float=1.0)
    loc_count = op.Mul(op.Add(op.ReduceSum(local_w, keepdims=0), one), tokens)       # [1]
    s_loc = op.ReduceSum(op.Mul(qbar, op.Div(loc_sum, loc_count)), [-1], keepdims=0)  # [H]
    k_sink_mean = op.ReduceMean(op.Cast(k_sink, to=_FLOAT), [1], keepdims=0)         # [S_sink, H, D]
    s_sink = op.ReduceSum(op.Mul(op.Unsqueeze(qbar, [0]), k_sink_mean), [-1], keepdims=0)  # [S_sink, H]
    prefer = op.Cast(op.Greater(s_sink, op.Unsqueeze(s_loc, [0])), to=_FLOAT)
    ratios = op.Mul(op.ReduceMean(prefer, [-1], keepdims=0), op.Cast(sink_valid, to=_FLOAT))
    thr = op.Constant(value_float=threshold)
    keep_sink = op.And(sink_valid, op.Not(op.Greater(ratios, thr)))

    # -- attention over [kept sinks | valid local pages | current block], float32 ------
    dims = op.Shape(q)                                             # [L, H, D]
    flat = op.Concat(op.Constant(value_ints=[-1]), op.Shape(q, start=1, end=3), axis=0)  # [-1, H, D]
    keys = op.Cast(op.Concat(op.Reshape(k_sink, flat), op.Reshape(k_local, flat), k_cur, axis=0), to=_FLOAT)
    values = op.Cast(op.Concat(op.Reshape(v_sink, flat), op.Reshape(v_local, flat), v_cur, axis=0), to=_FLOAT)
    tok1 = op.Shape(q, start=0, end=1)                             # [1] = L
    n_sink = op.Shape(sink_ids)
    n_local = op.Shape(local_ids)
    sink_vis = op.Reshape(op.Expand(op.Unsqueeze(keep_sink, [1]), op.Concat(n_sink, tok1, axis=0)), [-1])
    local_vis = op.Reshape(op.Expand(op.Unsqueeze(local_valid, [1]), op.Concat(n_local, tok1, axis=0)), [-1])
    cur_vis = op.Expand(op.Constant(value_ints=[1]), tok1)
    visible = op.Concat(sink_vis, local_vis, op.Cast(cur_vis, to=_BOOL), axis=0)     # [K]
    head_dim = op.Cast(op.Shape(q, start=2, end=3), to=_FLOAT)
    scale = op.Pow(head_dim, op.Constant(value_float=-0.5))        # [1]
    qh = op.Transpose(qf, perm=[1, 0, 2])                          # [H, L, D]
    kh = op.Transpose(keys, perm=[1, 2, 0])                        # [H, D, K]
    vh = op.Transpose(values, perm=[1, 0, 2])                      # [H, K, D]
    scores = op.Mul(op.MatMul(qh, kh), scale)                      # [H, L, K]
    ninf = op.Constant(value_float=float("-inf"))
    probs = op.Softmax(op.Where(visible, scores, ninf), axis=-1)   # the current block is always visible
    out = op.CastLike(op.Transpose(op.MatMul(probs, vh), perm=[1, 0, 2]), q)          # [L, H, D]
    out = op.Reshape(out, dims)
    return out, ratios


@onnxscript.script(dysink, default_opset=op)
def RetrieveSinks(bank_feats, bank_start, queries, query_valid, current_start, window_frames,
                  sink_size: int, k: int):
    """bank_feats [C, F], bank_start int64 [C], queries [Q, F], query_valid int32 [Q] (nonzero = valid),
    current_start / window_frames int64 [] -> slots int64 [k] (-1 past the eligible ones),
    scores float32 [k] (0 where the slot is -1)."""
    qv = op.Cast(op.Not(op.Equal(query_valid, op.CastLike(op.Constant(value_int=0), query_valid))), to=_FLOAT)  # [Q]
    n_valid = op.ReduceSum(qv, keepdims=0)                         # []
    one = op.Constant(value_float=1.0)
    query = op.Div(op.ReduceSum(op.Mul(op.Cast(queries, to=_FLOAT), op.Unsqueeze(qv, [1])), [0], keepdims=0),
                   op.Max(n_valid, one))                           # [F]
    score = op.MatMul(op.Cast(bank_feats, to=_FLOAT), query)       # [C]
    lo = op.Sub(current_start, window_frames)
    in_recent = op.And(op.GreaterOrEqual(bank_start, lo), op.Less(bank_start, current_start))
    zero_id = op.Constant(value_int=0)
    eligible = op.And(op.And(op.GreaterOrEqual(bank_start, zero_id), op.Not(in_recent)),
                      op.GreaterOrEqual(bank_start, op.Constant(value_int=sink_size)))
    eligible = op.And(eligible, op.Greater(n_valid, op.Constant(value_float=0.0)))
    ninf = op.Constant(value_float=float("-inf"))
    masked = op.Where(eligible, score, ninf)
    # k may exceed the capacity: pad with -inf like the reference (an empty pad otherwise).
    kk = op.Reshape(op.Constant(value_int=k), [1])
    pad_n = op.Max(op.Sub(kk, op.Shape(masked)), op.Constant(value_ints=[0]))
    padded = op.Concat(masked, op.Expand(ninf, pad_n), axis=0)
    top, order = op.TopK(padded, kk, axis=0, largest=1, sorted=1)  # ties: lower index first
    found = op.And(op.Not(op.IsInf(top)), op.Equal(top, top))      # isfinite
    slots = op.Where(found, order, op.Constant(value_int=-1))
    scores = op.Where(found, top, op.Constant(value_float=0.0))
    return slots, scores


@onnxscript.script(dysink, default_opset=op)
def GatedSinkAttentionQ8(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, k_scale, v_scale,
                         threshold: float, sink_kv_bf16: int, fixed_sinks: int = 0):
    """GatedSinkAttention over 8-bit pools (int8 / float8e4m3fn, `kv_cache_dtype` int8 / fp8) with
    float32 scales k_scale, v_scale [P, L, H]: the pages the ids name are gathered and dequantised
    (q * scale in float32, then q's dtype: ops/kv_pages.dequantise_pages) into a pool of their own,
    [local pages | sink pages], over which GatedSinkAttention runs with the ids renumbered (empty
    slots stay empty). Only the gathered pages are dequantised, never the whole pool."""
    zero_id = op.Constant(value_int=0)
    one_id = op.Constant(value_int=1)
    pages = op.Shape(k_pool, start=0, end=1)                       # [1] = P
    local_valid = op.And(op.GreaterOrEqual(local_ids, zero_id), op.Less(local_ids, pages))
    sink_valid = op.And(op.GreaterOrEqual(sink_ids, zero_id), op.Less(sink_ids, pages))
    ids = op.Concat(op.Where(local_valid, local_ids, zero_id), op.Where(sink_valid, sink_ids, zero_id), axis=0)
    # ONNX's Gather takes no float8 type (up to opset 23): the pool is cast to float16 first (exact for
    # e4m3 and int8 values), then the pages are gathered. The TensorRT plugin reads pages in place.
    k_pages = op.Gather(op.Cast(k_pool, to=_FP16), ids, axis=0)
    v_pages = op.Gather(op.Cast(v_pool, to=_FP16), ids, axis=0)
    k_deq = op.Mul(op.Cast(k_pages, to=_FLOAT), op.Unsqueeze(op.Gather(k_scale, ids, axis=0), [3]))
    v_deq = op.Mul(op.Cast(v_pages, to=_FLOAT), op.Unsqueeze(op.Gather(v_scale, ids, axis=0), [3]))
    n_local = op.Squeeze(op.Shape(local_ids), [0])
    n_sink = op.Squeeze(op.Shape(sink_ids), [0])
    none = op.Constant(value_int=-1)
    local_new = op.Where(local_valid, op.Range(zero_id, n_local, one_id), none)
    sink_new = op.Where(sink_valid, op.Add(op.Range(zero_id, n_sink, one_id), n_local), none)
    out, ratios = GatedSinkAttention(q, k_cur, v_cur, op.CastLike(k_deq, q), op.CastLike(v_deq, q),
                                     local_new, sink_new, threshold=threshold, sink_kv_bf16=sink_kv_bf16,
                                     fixed_sinks=fixed_sinks)
    return out, ratios


CUSTOM_OPS = {"GatedSinkAttention": GatedSinkAttention, "GatedSinkAttentionQ8": GatedSinkAttentionQ8,
              "RetrieveSinks": RetrieveSinks}
# A body that calls another custom op's body: both go into the model.
CALLS = {"GatedSinkAttentionQ8": ("GatedSinkAttention",)}


def function_protos(opset: int = OPSET) -> list[onnx.FunctionProto]:
    """The bodies to attach to a model at `opset` (their opset import is set to it: a model's
    functions must share its opset)."""
    if not MIN_OPSET <= opset <= OPSET:
        raise ValueError(f"the function bodies support opsets {MIN_OPSET}..{OPSET}, got {opset}")
    protos = []
    for fn in CUSTOM_OPS.values():
        proto = fn.to_function_proto()
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset
        # The nodes also carry the TensorRT plugin strings: declare them so the
        # function's signature lists every attribute its nodes set (the body ignores them).
        for name in PLUGIN_ATTRS:
            if name not in proto.attribute:
                proto.attribute.append(name)
        protos.append(proto)
    return protos
