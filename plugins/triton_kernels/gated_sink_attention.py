"""Kernel bodies of GatedSinkAttention (contract: dysink_deploy.ops.gated_sink_attention).

Three kernels, launched in this order on one stream:

1. `gate_partial_sums`  grid (J, H, N_SPLIT), J = n_sink + n_local + 2.
   Slot j of the gate's "sets": j < n_sink a sink page, then the local pages,
   then the current block's keys (j = n_sink + n_local), then the queries
   (j = n_sink + n_local + 1). Each program sums one head of one slot over one
   token range in float32; empty slots write zeros. Deterministic: no atomics,
   so the ratios never depend on scheduling.
2. `gate_decide`        grid (n_sink,). Reduces the partial sums in a fixed
   order and writes ratio_e = fraction of heads with <qbar, mean k_e> >
   <qbar, mean local k> (ALGORITHM.md section 6), 0 for an empty slot.
3. `paged_attention`    grid (cdiv(L, BLOCK_M), H). Online softmax in float32
   over the kept sink pages, the valid local pages and the current block,
   reading K/V in place from the pools by page id. The drop decision
   (ratio > threshold, strict) is read on the device from kernel 2's output.

Layouts are contiguous (the launch wrappers and the TensorRT plugin check it):
    q, k_cur, v_cur, out     [L, H, HEAD_DIM]        token stride H*HEAD_DIM
    k_pool, v_pool           [P, L, H, HEAD_DIM]     page stride L*H*HEAD_DIM (int64)
    k_scale, v_scale         float32 [P, L, H]       PAGES == "scaled" only (else None, a constexpr)
    local_ids                int64 [n_local]         -1 = empty slot
    sink_ids                 int64 [n_sink]          first `fixed_sinks` = fixed sink
    P                        i32                     pages in the pools (k_pool's first dim)
    partial (workspace)      float32 [J, H, N_SPLIT, HEAD_DIM]
    ratios                   float32 [n_sink]
Page offsets are computed in int64: a pool may exceed 2^31 elements. A page id outside [0, P)
is an empty slot, like -1, in every kernel that reads one (the reference's rule): the runtime
never passes one, but TensorRT may time a plugin on arbitrary buffer contents, and a read outside
the pools would poison the CUDA context.
Page storage (`PAGES`, a constexpr; ops/kv_pages.py): "same" = the pools hold q's dtype (read as
is); "cast" = another float dtype (bf16 pages under an fp16 / fp32 model: read, then cast to q's
dtype); "scaled" = 8-bit pages (int8 or float8e4nv) with one float32 scale per (page, token, head):
read as q * scale in float32, then cast to q's dtype, before any other use, as the reference does.
The current block (k_cur, v_cur) and the queries are never stored in pages: always q's dtype.
Every integer argument is `do_not_specialize`: Triton's JIT would otherwise compile an
argument equal to 1 (one token, one head, one sink) as a constant, and `.to()` on it fails.
"""

import triton
import triton.language as tl


@triton.jit
def _in_pool(page, P):
    """The id names a page of the pool: 0 <= page < P (else an empty slot, like -1)."""
    return (page >= 0) & (page < P)


@triton.jit
def _slot_id(s, n_sink, n_local, local_ids, sink_ids):
    """Slot s -> (the id as stored, is_sink, is_local); -1 past both lists. Loads are masked, so s may
    be past either list. The id may lie outside [0, P): callers bound it."""
    is_sink = s < n_sink
    is_local = (s >= n_sink) & (s < n_sink + n_local)
    sid = tl.load(sink_ids + s, mask=is_sink, other=-1)
    lid = tl.load(local_ids + (s - n_sink), mask=is_local, other=-1)
    page = tl.where(is_sink, sid, lid)
    return page, is_sink, is_local


@triton.jit
def _slot_page(s, n_sink, n_local, local_ids, sink_ids, P):
    """Slot s -> (page id, or -1 for an empty slot or an id outside [0, P), is_sink, is_local)."""
    page, is_sink, is_local = _slot_id(s, n_sink, n_local, local_ids, sink_ids)
    page = tl.where(_in_pool(page, P), page, -1)
    return page, is_sink, is_local


@triton.jit
def _round_bf16(x):
    """Round to bfloat16 and back to x's dtype, through float32: every step is a native
    conversion on sm_80 (a direct f16 -> bf16 cvt needs sm_90) and the result equals
    torch's x.to(bfloat16).to(x.dtype)."""
    return x.to(tl.float32).to(tl.bfloat16).to(tl.float32).to(x.dtype)


@triton.jit
def _read_page(pool, scale, page, stride_page, L, H, h, offs_t, off, mask, t_ok, OUT_TY: tl.constexpr,
               PAGES: tl.constexpr):
    """Tokens `offs_t` of head h of one page (`off`: the [T, D] element offsets inside a page, `mask`
    theirs, `t_ok` the tokens'), read from a pool in its storage and returned in OUT_TY (q's dtype).
    "scaled": q * scale in float32 (scale [P, L, H]), then the cast (ops/kv_pages.dequantise_pages);
    "cast": the cast alone."""
    x = tl.load(pool + page.to(tl.int64) * stride_page + off, mask=mask, other=0.0)
    if PAGES == "scaled":
        s = tl.load(scale + page.to(tl.int64) * (L.to(tl.int64) * H) + offs_t * H + h, mask=t_ok, other=0.0)
        x = x.to(tl.float32) * s[:, None]
    return x.to(OUT_TY)


@triton.jit(do_not_specialize=["L", "H", "n_local", "n_sink", "fixed_sinks", "tokens_per_split", "P"])
def gate_partial_sums(
    q,              # [L, H, D]      current block queries (post-RoPE)
    k_cur,          # [L, H, D]      current block keys
    k_pool,         # [P, L, H, D]   key pool
    local_ids,      # int64 [n_local]
    sink_ids,       # int64 [n_sink]
    partial,        # float32 [J, H, n_split, HEAD_DIM] (output)
    L, H, n_local, n_sink, fixed_sinks, tokens_per_split, P,
    k_scale,        # float32 [P, L, H] (PAGES "scaled"), else None
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, SINK_BF16: tl.constexpr,
    PAGES: tl.constexpr,
):
    j = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    n_split = tl.num_programs(2)
    page, is_sink, is_local = _slot_page(j, n_sink, n_local, local_ids, sink_ids, P)
    is_cur = j == n_sink + n_local
    is_q = j == n_sink + n_local + 1
    valid = is_cur | is_q | (page >= 0)

    stride_tok = H * HEAD_DIM
    stride_page = L.to(tl.int64) * stride_tok
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if valid:
        if PAGES == "same":
            base = k_pool + page.to(tl.int64) * stride_page
            if is_cur:
                base = k_cur
            if is_q:
                base = q
        t0 = split * tokens_per_split
        t1 = tl.minimum(t0 + tokens_per_split, L)
        for t in range(t0, t1, BLOCK_T):
            offs_t = t + tl.arange(0, BLOCK_T)
            if PAGES == "same":
                ptrs = base + offs_t[:, None] * stride_tok + h * HEAD_DIM + offs_d[None, :]
                x = tl.load(ptrs, mask=(offs_t < t1)[:, None] & d_ok[None, :], other=0.0)
            else:
                # Pages in another storage than q (bf16 or 8-bit): the pages and the current block /
                # queries are read by separate loads (their pointers differ in type).
                t_ok = offs_t < t1
                off = offs_t[:, None] * stride_tok + h * HEAD_DIM + offs_d[None, :]
                mask = t_ok[:, None] & d_ok[None, :]
                if is_cur | is_q:
                    cur = k_cur
                    if is_q:
                        cur = q
                    x = tl.load(cur + off, mask=mask, other=0.0)
                else:
                    x = _read_page(k_pool, k_scale, page, stride_page, L, H, h, offs_t, off, mask, t_ok,
                                   k_cur.dtype.element_ty, PAGES)
            if SINK_BF16:
                # The reference rounds retrieved (not fixed) sink K/V to bf16, then back.
                if is_sink & (j >= fixed_sinks):
                    x = _round_bf16(x)
            acc += tl.sum(x.to(tl.float32), axis=0)
    out = partial + ((j * H + h) * n_split + split).to(tl.int64) * HEAD_DIM + offs_d
    tl.store(out, acc, mask=d_ok)


@triton.jit
def _slot_sum(partial, j, H, offs_h, offs_d, mask, HEAD_DIM: tl.constexpr, N_SPLIT: tl.constexpr):
    """Sum over splits of slot j's partial sums -> float32 [BLOCK_H, BLOCK_D], in a fixed order."""
    rows = (j * H + offs_h).to(tl.int64) * N_SPLIT
    total = tl.load(partial + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    for split in tl.static_range(1, N_SPLIT):
        total += tl.load(partial + (rows + split)[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    return total


@triton.jit(do_not_specialize=["L", "H", "n_local", "n_sink", "P"])
def gate_decide(
    partial,        # float32 [J, H, N_SPLIT, HEAD_DIM] from gate_partial_sums
    local_ids,      # int64 [n_local]
    sink_ids,       # int64 [n_sink]
    ratios,         # float32 [n_sink] (output)
    L, H, n_local, n_sink, P,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, N_SPLIT: tl.constexpr,
):
    e = tl.program_id(0)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_ok = offs_h < H
    mask = h_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    # The reference's arithmetic, step for step: every mean is a float32 sum divided by its
    # count with a correctly rounded division (div_rn, as torch's CPU mean and `/`), so that
    # identical pages give bitwise-identical means and an exact tie (s_e == s_loc) is not
    # counted, as in the reference. The sums' order differs from torch's only where float32
    # addition is inexact, i.e. never on the hand-worked (exact) inputs.
    tokens = L.to(tl.float32)
    qbar = tl.div_rn(_slot_sum(partial, n_sink + n_local + 1, H, offs_h, offs_d, mask, HEAD_DIM, N_SPLIT), tokens)
    # Local set = the valid local pages, in slot order, then the current block (empty slots
    # were summed to 0, and adding 0 is exact).
    loc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    pages = 1.0   # the current block
    for i in range(0, n_local + 1):   # the local slots, then the current block (i == n_local)
        loc += _slot_sum(partial, n_sink + i, H, offs_h, offs_d, mask, HEAD_DIM, N_SPLIT)
        pages += tl.where(_in_pool(tl.load(local_ids + i, mask=i < n_local, other=-1), P), 1.0, 0.0)
    s_loc = tl.sum(qbar * tl.div_rn(loc, pages * tokens), axis=1)                     # [BLOCK_H]

    sink = tl.load(sink_ids + e)
    mean_e = tl.div_rn(_slot_sum(partial, e, H, offs_h, offs_d, mask, HEAD_DIM, N_SPLIT), tokens)
    s_e = tl.sum(qbar * mean_e, axis=1)
    count = tl.sum(tl.where(h_ok & (s_e > s_loc), 1.0, 0.0), axis=0)
    ratio = tl.div_rn(count, H.to(tl.float32))   # the fraction of heads, as torch's mean over heads
    tl.store(ratios + e, tl.where(_in_pool(sink, P), ratio, 0.0))


@triton.jit(do_not_specialize=["L", "H", "n_local", "n_sink", "fixed_sinks", "P"])
def paged_attention(
    q,              # [L, H, D]      current block queries (post-RoPE)
    k_cur, v_cur,   # [L, H, D]      current block keys / values
    k_pool, v_pool, # [P, L, H, D]   pools; pages read in place
    local_ids,      # int64 [n_local]
    sink_ids,       # int64 [n_sink]
    ratios,         # float32 [n_sink] from gate_decide
    out,            # [L, H, D]      (output, q's dtype)
    threshold,      # float32: a sink is dropped when its ratio > threshold
    sm_scale,       # float32: 1 / sqrt(HEAD_DIM)
    L, H, n_local, n_sink, fixed_sinks, P,
    k_scale, v_scale,  # float32 [P, L, H] (PAGES "scaled"), else None
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SINK_BF16: tl.constexpr, DOT_PRECISION: tl.constexpr, PAGES: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    stride_tok = H * HEAD_DIM
    stride_page = L.to(tl.int64) * stride_tok
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < L
    head = h * HEAD_DIM + offs_d
    q_tile = tl.load(q + offs_m[:, None] * stride_tok + head[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634  # exp2 domain

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for s in range(0, n_sink + n_local + 1):
        page, is_sink, is_local = _slot_id(s, n_sink, n_local, local_ids, sink_ids)
        ratio = tl.load(ratios + s, mask=is_sink, other=0.0)
        is_cur = s == n_sink + n_local
        keep = is_cur | (is_local & (page >= 0)) | (is_sink & (page >= 0) & ~(ratio > threshold))
        if keep:
            n_end = L
            if PAGES == "same":
                k_base = k_pool + page.to(tl.int64) * stride_page
                v_base = v_pool + page.to(tl.int64) * stride_page
                if is_cur:
                    k_base = k_cur
                    v_base = v_cur
                elif page >= P:
                    # An id past the pool is an empty slot (gate_decide gave such a sink ratio 0): no key
                    # tile is read. A zero trip count here rather than `page < P` in `keep`: folded into
                    # `keep`, the 1.3B fp16 sm_120 variant spilled (32-64 B, Triton 3.7.1); this form
                    # spills in no variant (1.3B and tiny, the 8 architectures of docs/kernels-report.md).
                    n_end = 0
            elif page >= P:   # the current block's slot has page -1
                n_end = 0
            for start_n in range(0, n_end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                n_ok = offs_n < L
                kv_off = offs_n[:, None] * stride_tok + head[None, :]
                if PAGES == "same":
                    if BLOCK_D == HEAD_DIM:
                        k = tl.load(k_base + kv_off, mask=n_ok[:, None], other=0.0)
                        v = tl.load(v_base + kv_off, mask=n_ok[:, None], other=0.0)
                    else:
                        k = tl.load(k_base + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                        v = tl.load(v_base + kv_off, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                else:
                    # Pages in another storage than q: the current block and the pages are read by
                    # separate loads (their pointers differ in type).
                    kv_mask = n_ok[:, None] & d_ok[None, :]
                    if is_cur:
                        k = tl.load(k_cur + kv_off, mask=kv_mask, other=0.0)
                        v = tl.load(v_cur + kv_off, mask=kv_mask, other=0.0)
                    else:
                        k = _read_page(k_pool, k_scale, page, stride_page, L, H, h, offs_n, kv_off, kv_mask, n_ok,
                                       q.dtype.element_ty, PAGES)
                        v = _read_page(v_pool, v_scale, page, stride_page, L, H, h, offs_n, kv_off, kv_mask, n_ok,
                                       q.dtype.element_ty, PAGES)
                if SINK_BF16:
                    if is_sink & (s >= fixed_sinks):
                        k = _round_bf16(k)
                        v = _round_bf16(v)
                qk = tl.dot(q_tile, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
                qk = tl.where(n_ok[None, :], qk, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, axis=1))
                alpha = tl.math.exp2(m_i - m_new)
                p = tl.math.exp2(qk - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, axis=1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
                m_i = m_new
    # The current block is always attended to, so l_i > 0 on every real row.
    result = acc / l_i[:, None]
    tl.store(out + offs_m[:, None] * stride_tok + head[None, :], result.to(out.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
