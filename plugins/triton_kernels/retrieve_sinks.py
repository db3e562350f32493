"""Kernel bodies of RetrieveSinks (contract: dysink_deploy.ops.retrieve_sinks).

Two kernels, launched in this order on one stream:

1. `retrieve_scores`  grid (cdiv(C, BLOCK_C),). score_j = f_j . mean(valid
   queries); written as -inf where entry j is not eligible (empty slot, start
   frame inside [current_start - window_frames, current_start), start frame
   below sink_size, or no valid query).
2. `retrieve_topk`    grid (1,). Top-k of those scores, ties to the lower
   slot; -1 / 0 past the eligible entries. BLOCK_C >= C (capacity <= 1024).

    bank_feats     float32 [C, F]
    bank_start     int64 [C]           -1 = empty slot
    queries        float32 [Q, F]
    query_valid    int32 [Q]           nonzero = valid (1 valid, 0 not; no bool: TensorRT plugin I/O)
    current_start  int64 []            read on the device (no host sync)
    window_frames  int64 []
    scores_ws      float32 [C]         workspace between the two kernels
    slots          int64 [k]           output
    top_scores     float32 [k]         output

Every integer argument is `do_not_specialize` (a value of 1 would become a constant).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["C", "F", "Q", "sink_size"])
def retrieve_scores(
    bank_feats, bank_start, queries, query_valid, current_start, window_frames, scores_ws,
    C, F, Q, sink_size,
    BLOCK_C: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    # Number of valid queries (their mean is the retrieval query).
    n_valid = 0.0
    for q0 in range(0, Q, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        valid = (tl.load(query_valid + offs_q, mask=offs_q < Q, other=0) != 0).to(tl.float32)
        n_valid += tl.sum(valid, axis=0)
    denom = tl.maximum(n_valid, 1.0)

    score = tl.zeros([BLOCK_C], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        f_ok = offs_f < F
        qsum = tl.zeros([BLOCK_F], dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            offs_q = q0 + tl.arange(0, BLOCK_Q)
            q_ok = offs_q < Q
            valid = (tl.load(query_valid + offs_q, mask=q_ok, other=0) != 0).to(tl.float32)
            rows = tl.load(queries + offs_q[:, None].to(tl.int64) * F + offs_f[None, :],
                           mask=q_ok[:, None] & f_ok[None, :], other=0.0)
            qsum += tl.sum(rows * valid[:, None], axis=0)
        feats = tl.load(bank_feats + offs_c[:, None].to(tl.int64) * F + offs_f[None, :],
                        mask=c_ok[:, None] & f_ok[None, :], other=0.0)
        score += tl.sum(feats * (qsum / denom)[None, :], axis=1)

    start = tl.load(bank_start + offs_c, mask=c_ok, other=-1)
    cur = tl.load(current_start)
    lo = cur - tl.load(window_frames)
    recent = (start >= lo) & (start < cur)
    eligible = c_ok & (start >= 0) & ~recent & (start >= sink_size)
    eligible = tl.where(n_valid > 0, eligible, False)  # no query: nothing is retrieved
    tl.store(scores_ws + offs_c, tl.where(eligible, score, float("-inf")), mask=c_ok)


@triton.jit(do_not_specialize=["C", "k"])
def retrieve_topk(
    scores_ws, slots, top_scores,
    C, k,
    BLOCK_C: tl.constexpr,
):
    offs_c = tl.arange(0, BLOCK_C)
    scores = tl.load(scores_ws + offs_c, mask=offs_c < C, other=float("-inf"))
    for i in range(0, k):
        best = tl.max(scores, axis=0)
        found = best > float("-inf")
        first = tl.min(tl.where(scores == best, offs_c, BLOCK_C), axis=0)
        tl.store(slots + i, tl.where(found, first, -1).to(tl.int64))
        tl.store(top_scores + i, tl.where(found, best, 0.0))
        scores = tl.where(offs_c == first, float("-inf"), scores)
