"""GatedSinkAttention: the PyTorch reference (single source of truth).

Attention of the current block's queries over [sink pages | local-window
pages | the current block], where past blocks' K/V are read in place from a
page pool by page id, and each sink page passes through DySink's sink
anomaly gate first (ALGORITHM.md section 6). The torch backend, the tests,
the ONNX validators and the plugin tests all call `gated_sink_attention_ref`.

Shapes (one stream, batch 1; L tokens per block, H heads, D head dim):
    q, k_cur, v_cur   [L, H, D]      current block, post-RoPE
    k_pool, v_pool    [P, L, H, D]   one page = one block's clean-pass K/V
    local_ids         int64 [S_loc]  pages of the local window's past blocks
    sink_ids          int64 [S_sink] fixed-sink and retrieved pages
    -1 in an id list means "empty slot": it contributes nothing. So does any id
                      outside [0, P) (it names no page: read nothing, gate nothing, ratio 0);
                      the runtime never passes one, the rule keeps every implementation
                      (kernels included) defined on arbitrary id buffers.
    fixed_sinks       the first `fixed_sinks` sink slots hold the fixed (LongLive)
                      sink: gated like the others but never bf16-rounded
    k_scale, v_scale  float32 [P, L, H], only with 8-bit pools (int8 / float8_e4m3fn,
                      `kv_cache_dtype` fp8 / int8; ops/kv_pages.py): a gathered page is
                      dequantised (q * scale) to q's dtype before any other use. A pool of
                      another float dtype than q (bf16 pages) is read cast to q's dtype.
Outputs:
    out               [L, H, D]      in q's dtype
    ratios            float32 [S_sink]  fraction of heads with s_e > s_loc
                                         (0 for empty slots)
A sink is dropped when its ratio > threshold (strict, like the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kv_pages import dequantise_pages


def page_valid(ids: Tensor, pages: int) -> Tensor:
    """bool [S]: the slot names a page of a P-page pool (0 <= id < P); -1 and any other id are empty."""
    return (ids >= 0) & (ids < pages)


def _gather_pages(pool: Tensor, ids: Tensor, valid: Tensor, scale: Tensor | None = None,
                  dtype: torch.dtype | None = None) -> Tensor:
    """[P, L, H, D] x int64 [S] -> [S, L, H, D]; empty slots (not `valid`) read page 0 (masked later).
    With `scale` [P, L, H] (8-bit pool): the pages dequantised to `dtype`; else cast to `dtype`
    (a no-op when the pool already has it)."""
    safe = torch.where(valid, ids, torch.zeros_like(ids))
    pages = pool.index_select(0, safe)
    if scale is not None:
        return dequantise_pages(pages, scale.index_select(0, safe), dtype)
    return pages if dtype is None else pages.to(dtype)


def gate_ratios(q: Tensor, k_cur: Tensor, k_local: Tensor, local_valid: Tensor,
                k_sink: Tensor, sink_valid: Tensor) -> Tensor:
    """Fraction of heads whose mean query prefers each sink over the local window.

    qbar_h = mean over the block's queries; s(h) = <qbar_h, mean key of a set>
    (no 1/sqrt(d)); the local set is the window's past pages plus the current
    block. All in float32. Returns float32 [S_sink], 0 where the slot is empty.
    """
    qbar = q.float().mean(0)                                          # [H, D]
    tokens = k_cur.shape[0]
    loc_sum = (k_local.float().sum(1) * local_valid[:, None, None]).sum(0) + k_cur.float().sum(0)
    loc_count = (local_valid.sum() + 1).float() * tokens
    s_loc = (qbar * (loc_sum / loc_count)).sum(-1)                    # [H]
    s_sink = (qbar[None] * k_sink.float().mean(1)).sum(-1)            # [S, H]
    prefer = (s_sink > s_loc[None]).float().mean(-1)
    return prefer * sink_valid.float()


# ONNX node identity (DESIGN.md "The two custom ops"): TensorRT binds its plugin
# by these; ONNX Runtime inlines the function body (ops/onnx_functions.py).
ONNX_DOMAIN = "dysink"
ONNX_DOMAIN_VERSION = 1
PLUGIN_ATTRS = {"plugin_namespace": "dysink", "plugin_version": "1"}


@torch.library.custom_op("dysink::gated_sink_attention", mutates_args=())
def gated_sink_attention(
    q: Tensor, k_cur: Tensor, v_cur: Tensor, k_pool: Tensor, v_pool: Tensor,
    local_ids: Tensor, sink_ids: Tensor, threshold: float, sink_kv_bf16: bool, fixed_sinks: int = 0,
    k_scale: Tensor | None = None, v_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    return gated_sink_attention_ref(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids,
                                    threshold, sink_kv_bf16, fixed_sinks, k_scale, v_scale)


@gated_sink_attention.register_fake
def _(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, threshold, sink_kv_bf16, fixed_sinks=0,
      k_scale=None, v_scale=None):
    return torch.empty_like(q), q.new_empty(sink_ids.shape, dtype=torch.float32)


def gated_sink_attention_node(
    q: Tensor, k_cur: Tensor, v_cur: Tensor, k_pool: Tensor, v_pool: Tensor,
    local_ids: Tensor, sink_ids: Tensor, threshold: float, sink_kv_bf16: bool, fixed_sinks: int = 0,
    k_scale: Tensor | None = None, v_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The op as models call it: the custom op eagerly, a `dysink::GatedSinkAttention`
    node (attributes threshold, sink_kv_bf16 + plugin strings) under ONNX export."""
    if torch.onnx.is_in_onnx_export():
        scales = () if k_scale is None else (k_scale, v_scale)
        op_type = "GatedSinkAttention" if k_scale is None else "GatedSinkAttentionQ8"
        out, ratios = torch.onnx.ops.symbolic_multi_out(
            f"{ONNX_DOMAIN}::{op_type}", (q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, *scales),
            {"threshold": float(threshold), "sink_kv_bf16": int(bool(sink_kv_bf16)),
             "fixed_sinks": int(fixed_sinks), **PLUGIN_ATTRS},
            dtypes=(q.dtype, torch.float32), shapes=(q.shape, sink_ids.shape), version=ONNX_DOMAIN_VERSION)
        return out, ratios
    return gated_sink_attention(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, threshold, sink_kv_bf16,
                                fixed_sinks, k_scale, v_scale)


def gated_sink_attention_ref(
    q: Tensor, k_cur: Tensor, v_cur: Tensor, k_pool: Tensor, v_pool: Tensor,
    local_ids: Tensor, sink_ids: Tensor, threshold: float, sink_kv_bf16: bool = True, fixed_sinks: int = 0,
    k_scale: Tensor | None = None, v_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference math, softmax and accumulation in float32. See module docstring."""
    tokens, heads, dim = q.shape
    if (k_scale is None) != (v_scale is None):
        raise ValueError("gated_sink_attention: give both k_scale and v_scale (8-bit pages) or neither")
    local_valid = page_valid(local_ids, k_pool.shape[0])
    sink_valid = page_valid(sink_ids, k_pool.shape[0])
    # Pages read in q's dtype: a no-op for model-precision pools (auto), a cast for bf16 pages,
    # the dequantisation of 8-bit pages.
    dt = None if (k_scale is None and k_pool.dtype == q.dtype) else q.dtype
    k_local = _gather_pages(k_pool, local_ids, local_valid, k_scale, dt)
    v_local = _gather_pages(v_pool, local_ids, local_valid, v_scale, dt)
    k_sink = _gather_pages(k_pool, sink_ids, sink_valid, k_scale, dt)
    v_sink = _gather_pages(v_pool, sink_ids, sink_valid, v_scale, dt)
    if sink_kv_bf16:
        # The reference casts retrieved K/V to bf16 before using them (gate and
        # attention alike); a no-op when the pool already is bf16. The first
        # `fixed_sinks` slots hold the fixed sink, which the reference reads from
        # its local cache: those are not rounded.
        retrieved = (torch.arange(sink_ids.shape[0], device=sink_ids.device) >= fixed_sinks)[:, None, None, None]
        k_sink = torch.where(retrieved, k_sink.to(torch.bfloat16).to(k_sink.dtype), k_sink)
        v_sink = torch.where(retrieved, v_sink.to(torch.bfloat16).to(v_sink.dtype), v_sink)

    ratios = gate_ratios(q, k_cur, k_local, local_valid, k_sink, sink_valid)
    keep_sink = sink_valid & ~(ratios > threshold)

    keys = torch.cat([k_sink.reshape(-1, heads, dim), k_local.reshape(-1, heads, dim), k_cur]).float()
    values = torch.cat([v_sink.reshape(-1, heads, dim), v_local.reshape(-1, heads, dim), v_cur]).float()
    visible = torch.cat([
        keep_sink.repeat_interleave(tokens),
        local_valid.repeat_interleave(tokens),
        torch.ones(tokens, dtype=torch.bool, device=q.device),
    ])
    scores = torch.einsum("qhd,khd->hqk", q.float(), keys) * dim ** -0.5
    scores = scores.masked_fill(~visible[None, None, :], float("-inf"))
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), values)
    return out.to(q.dtype), ratios
