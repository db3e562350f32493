"""The torch half of the plugin harness' cases (plugins/harness.py imports it lazily): inputs at the
contract's shapes, the PyTorch references' outputs on CPU, float64 evaluations for the 2x rule."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..graphs import TensorSpec
from ..ops.gated_sink_attention import gated_sink_attention_ref, page_valid
from ..ops.retrieve_sinks import retrieve_sinks_ref
from ..stream_config import StreamConfig

TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
         "int32": torch.int32, "bool": torch.bool}


def save(path, t: Tensor, dtype: str) -> None:
    """`t` as a .npy of the contract dtype; bfloat16 as its raw bits (uint16)."""
    t = t.detach().cpu().contiguous().to(TORCH[dtype])
    a = t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()
    np.save(path, a)


def load(path, dtype: str) -> Tensor:
    """Inverse of `save`."""
    a = np.load(path, allow_pickle=False)
    if dtype == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def make(op: str, inputs: list[TensorSpec], attrs: dict, stream: StreamConfig, g: torch.Generator):
    """(input tensors in the node's order, reference outputs, {output name: float64 evaluation})."""
    values = {name: value for name, (_, value) in attrs.items()}
    if op == "GatedSinkAttention":
        return _gated_sink_attention(inputs, values, g)
    return _retrieve_sinks(inputs, values, stream, g)


def _gated_sink_attention(inputs, attrs, g):
    spec = {s.name: s for s in inputs}
    dtype = TORCH[spec["q"].dtype]
    block, pool = spec["q"].shape, spec["k_pool"].shape
    q, k_cur, v_cur = (torch.randn(block, generator=g).to(dtype) for _ in range(3))
    k_pool, v_pool = (torch.randn(pool, generator=g).to(dtype) for _ in range(2))
    n_local, n_sink = spec["local_ids"].shape[0], spec["sink_ids"].shape[0]
    pages = torch.randperm(pool[0], generator=g)
    local_ids = pages[:n_local].clone()
    if n_local > 1:
        local_ids[-1] = -1                       # an empty window slot, as while the stream is young
    sink_ids = pages[n_local:n_local + n_sink].clone()
    tensors = [q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids]
    threshold, bf16, fixed = attrs["threshold"], bool(attrs["sink_kv_bf16"]), attrs["fixed_sinks"]
    out, ratios = gated_sink_attention_ref(*tensors, threshold, bf16, fixed)
    exact = _attention_float64(*tensors, threshold, bf16, fixed, ratios)
    return tensors, [out, ratios], {"out": exact}


def _attention_float64(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, threshold, bf16, fixed, ratios):
    """The attention in float64 with the reference's gate decisions (its ratios must match exactly
    anyway); retrieved sinks rounded to bf16 first when `bf16`, as the reference does."""
    pages = k_pool.shape[0]
    keep = (page_valid(sink_ids, pages) & ~(ratios > threshold)).tolist()
    keys, vals = [], []
    for slot, page in enumerate(sink_ids.tolist()):
        if keep[slot]:
            k, v = k_pool[page], v_pool[page]
            if bf16 and slot >= fixed:
                k, v = k.to(torch.bfloat16).to(k_pool.dtype), v.to(torch.bfloat16).to(v_pool.dtype)
            keys.append(k)
            vals.append(v)
    for page in local_ids.tolist():
        if 0 <= page < pages:
            keys.append(k_pool[page])
            vals.append(v_pool[page])
    kk = torch.cat(keys + [k_cur]).double()
    vv = torch.cat(vals + [v_cur]).double()
    att = torch.softmax(torch.einsum("qhd,khd->hqk", q.double(), kk) / q.shape[-1] ** 0.5, -1)
    return torch.einsum("hqk,khd->qhd", att, vv)


def _retrieve_sinks(inputs, attrs, stream, g):
    spec = {s.name: s for s in inputs}
    capacity, feat = spec["bank_feats"].shape
    queue = spec["queries"].shape[0]
    bank_feats = torch.nn.functional.normalize(torch.randn(capacity, feat, generator=g), dim=-1)
    bank_start = torch.arange(capacity, dtype=torch.int64) * stream.block_frames
    bank_start[1::5] = -1                        # empty bank slots
    queries = torch.nn.functional.normalize(torch.randn(queue, feat, generator=g), dim=-1)
    query_valid = torch.ones(queue, dtype=torch.int32)
    if queue > 1:
        query_valid[-1] = 0                      # an empty queue slot
    # The block after the bank's newest entry: its window excludes the newest entries.
    current_start = torch.tensor(stream.block_frames * (capacity + 1), dtype=torch.int64)
    window_frames = torch.tensor(stream.window_frames(capacity), dtype=torch.int64)
    tensors = [bank_feats, bank_start, queries, query_valid, current_start, window_frames]
    slots, scores = retrieve_sinks_ref(*tensors, attrs["sink_size"], attrs["k"])
    valid = (query_valid != 0).double()
    mean = (queries.double() * valid[:, None]).sum(0) / valid.sum().clamp(min=1)
    found = slots >= 0
    exact = torch.where(found, (bank_feats.double() @ mean)[slots.clamp(min=0)], torch.zeros((), dtype=torch.float64))
    return tensors, [slots, scores], {"scores": exact}
