"""RetrieveSinks: the PyTorch reference (single source of truth).

Masked cosine top-k over the memory bank (ALGORITHM.md section 5):
score_j = f_j . mean(valid queries) (features are unit vectors, so this is
the mean cosine); entries whose start frame lies in
[current_start - window_frames, current_start) or below sink_size, and empty
bank slots, are not eligible. Ties keep the lower bank slot first (stable
sort, like ONNX TopK).

Shapes:
    bank_feats    float32 [C, F]   C = bank capacity
    bank_start    int64 [C]        start frame of each entry, -1 = empty slot
    queries       float32 [Q, F]   queue of recent block features
    query_valid   int32 [Q]        1 = valid, 0 = empty queue slot (any nonzero counts as valid);
                                   int32, not bool: TensorRT plugins take no BOOL inputs
    current_start int64 []         first latent frame of the block
    window_frames int64 []         this block's window (from its bank size)
Outputs:
    slots         int64 [k]        bank slots, best first, -1 past the eligible ones
    scores        float32 [k]      their scores, 0 where the slot is -1
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gated_sink_attention import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, PLUGIN_ATTRS


@torch.library.custom_op("dysink::retrieve_sinks", mutates_args=())
def retrieve_sinks(
    bank_feats: Tensor, bank_start: Tensor, queries: Tensor, query_valid: Tensor,
    current_start: Tensor, window_frames: Tensor, sink_size: int, k: int,
) -> tuple[Tensor, Tensor]:
    return retrieve_sinks_ref(bank_feats, bank_start, queries, query_valid, current_start,
                              window_frames, sink_size, k)


@retrieve_sinks.register_fake
def _(bank_feats, bank_start, queries, query_valid, current_start, window_frames, sink_size, k):
    return (bank_start.new_empty((k,)), bank_feats.new_empty((k,), dtype=torch.float32))


def retrieve_sinks_node(
    bank_feats: Tensor, bank_start: Tensor, queries: Tensor, query_valid: Tensor,
    current_start: Tensor, window_frames: Tensor, sink_size: int, k: int,
) -> tuple[Tensor, Tensor]:
    """The op as graphs call it: the custom op eagerly, a `dysink::RetrieveSinks`
    node (attributes sink_size, k + plugin strings) under ONNX export."""
    if torch.onnx.is_in_onnx_export():
        slots, scores = torch.onnx.ops.symbolic_multi_out(
            f"{ONNX_DOMAIN}::RetrieveSinks",
            (bank_feats, bank_start, queries, query_valid, current_start, window_frames),
            {"sink_size": int(sink_size), "k": int(k), **PLUGIN_ATTRS},
            dtypes=(torch.int64, torch.float32), shapes=((k,), (k,)), version=ONNX_DOMAIN_VERSION)
        return slots, scores
    return retrieve_sinks(bank_feats, bank_start, queries, query_valid, current_start, window_frames,
                          sink_size, k)


def retrieve_sinks_ref(
    bank_feats: Tensor, bank_start: Tensor, queries: Tensor, query_valid: Tensor,
    current_start: Tensor, window_frames: Tensor, sink_size: int, k: int,
) -> tuple[Tensor, Tensor]:
    """Reference math in float32. See module docstring."""
    qv = (query_valid != 0).float()
    query = (queries.float() * qv[:, None]).sum(0) / qv.sum().clamp(min=1.0)
    score = bank_feats.float() @ query                                   # [C]
    lo = current_start - window_frames
    in_recent = (bank_start >= lo) & (bank_start < current_start)
    eligible = (bank_start >= 0) & ~in_recent & (bank_start >= sink_size) & (qv.sum() > 0)
    masked = torch.where(eligible, score, torch.full_like(score, float("-inf")))
    if k > masked.shape[0]:
        masked = torch.cat([masked, masked.new_full((k - masked.shape[0],), float("-inf"))])
    top, order = torch.sort(masked, descending=True, stable=True)
    top, order = top[:k], order[:k]
    found = torch.isfinite(top)
    slots = torch.where(found, order, torch.full_like(order, -1))
    return slots, torch.where(found, top, torch.zeros_like(top))
