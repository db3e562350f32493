"""Launch wrappers of the Triton kernels: torch tensors in, torch tensors out.

Same signatures and contracts as the PyTorch references
(`dysink_deploy.ops.gated_sink_attention.gated_sink_attention_ref`,
`dysink_deploy.ops.retrieve_sinks.retrieve_sinks_ref`). On CUDA tensors the
kernels are JIT-compiled; on CPU tensors they need Triton's interpreter
(`TRITON_INTERPRET=1` in the environment before this module is imported),
which is how every CI run checks them without a GPU.

Nothing here reads a device value back to the host: page ids, gate ratios,
the current start frame and the window stay on the device.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ..errors import DysinkError
from . import interpreter_fixes, variants as V
from .triton_kernels import gated_sink_attention as gsa_k
from .triton_kernels import retrieve_sinks as rs_k

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_PAGE_8BIT = (torch.int8, torch.float8_e4m3fn)   # ops/kv_pages.STORAGE's 8-bit page dtypes


def page_mode(q_dtype: torch.dtype, pool_dtype: torch.dtype, scaled: bool) -> str:
    """The kernels' PAGES constexpr: 'same' (pools in q's dtype), 'cast' (bf16 pages under another
    model dtype), 'scaled' (8-bit pages with per (token, head) scales). One rule for the launch
    wrappers and the ahead-of-time variants."""
    if scaled:
        return "scaled"
    return "same" if pool_dtype == q_dtype else "cast"


def interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (CPU tensors)."""
    return type(gsa_k.paged_attention).__name__ == "InterpretedFunction"


if interpreted():
    interpreter_fixes.apply()


def device_arch(device: torch.device) -> int | None:
    """Compute capability x 10 of a CUDA device; None on CPU (interpreter)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _check_device(*tensors: Tensor) -> torch.device:
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise DysinkError("the kernel inputs must all be on one device, got "
                          + ", ".join(sorted({str(t.device) for t in tensors})))
    if device.type == "cpu" and not interpreted():
        raise DysinkError("the Triton kernels run CPU tensors only under Triton's interpreter: set "
                          "TRITON_INTERPRET=1 before starting Python (slow; for tests), or use the references")
    if device.type not in ("cpu", "cuda"):
        raise DysinkError(f"the Triton kernels run on CUDA devices, got {device}")
    return device


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise DysinkError(message)


def gated_sink_attention(
    q: Tensor, k_cur: Tensor, v_cur: Tensor, k_pool: Tensor, v_pool: Tensor,
    local_ids: Tensor, sink_ids: Tensor, threshold: float, sink_kv_bf16: bool = True, fixed_sinks: int = 0,
    k_scale: Tensor | None = None, v_scale: Tensor | None = None,
    *, tiles: V.Tiles | None = None, gate_splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """GatedSinkAttention with the Triton kernels.

    q, k_cur, v_cur [L, H, D] (fp32, fp16 or bf16); k_pool, v_pool [P, L, H, D] (one dtype:
    q's, bf16, or with k_scale / v_scale float32 [P, L, H] int8 / float8_e4m3fn: the
    `kv_cache_dtype` pages of ops/kv_pages.py); local_ids int64 [S_loc]; sink_ids int64 [S_sink]
    (-1, or any id outside [0, P), = empty slot, as in the reference). Returns out [L, H, D] in q's
    dtype and float32 ratios [S_sink].
    `tiles` and `gate_splits` override the per-architecture launch config (tests).
    """
    scales = () if k_scale is None else (k_scale, v_scale)
    _need((k_scale is None) == (v_scale is None), "give both k_scale and v_scale (8-bit pages) or neither")
    device = _check_device(q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, *scales)
    _need(q.dim() == 3 and k_pool.dim() == 4, f"q must be [L, H, D] and the pools [P, L, H, D], got "
          f"{tuple(q.shape)} and {tuple(k_pool.shape)}")
    tokens, heads, dim = q.shape
    for name, t in (("k_cur", k_cur), ("v_cur", v_cur)):
        _need(t.shape == q.shape, f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    for name, t in (("k_pool", k_pool), ("v_pool", v_pool)):
        _need(t.dim() == 4 and t.shape[1:] == q.shape,
              f"{name} must be [P, {tokens}, {heads}, {dim}], got {tuple(t.shape)}")
    _need(q.dtype in _DTYPES, f"the kernels take float32, float16 or bfloat16, got {q.dtype}")
    for t in (k_cur, v_cur):
        _need(t.dtype == q.dtype, f"k_cur and v_cur must have q's dtype {q.dtype}, got {t.dtype}")
    _need(v_pool.dtype == k_pool.dtype, f"k_pool and v_pool must share a dtype, got {k_pool.dtype} and {v_pool.dtype}")
    if scales:
        _need(k_pool.dtype in _PAGE_8BIT, f"with k_scale / v_scale the pools must be int8 or float8_e4m3fn "
              f"(8-bit pages), got {k_pool.dtype}")
        for name, t in (("k_scale", k_scale), ("v_scale", v_scale)):
            _need(t.dtype == torch.float32 and tuple(t.shape) == tuple(k_pool.shape[:3]),
                  f"{name} must be float32 {list(k_pool.shape[:3])} (one scale per page, token and head), "
                  f"got {t.dtype} {list(t.shape)}")
    else:
        _need(k_pool.dtype in (q.dtype, torch.bfloat16), f"the pools must have q's dtype {q.dtype} or bfloat16 "
              f"(8-bit pools need k_scale and v_scale), got {k_pool.dtype}")
    pages = page_mode(q.dtype, k_pool.dtype, bool(scales))
    for name, t in (("local_ids", local_ids), ("sink_ids", sink_ids)):
        _need(t.dtype == torch.int64 and t.dim() == 1, f"{name} must be int64 [S], got {t.dtype} {tuple(t.shape)}")
    _need(tokens > 0 and heads > 0, f"q must have at least one token and one head, got {tuple(q.shape)}")
    V.check_head_dim(dim)
    n_sink, n_local = sink_ids.numel(), local_ids.numel()
    _need(isinstance(fixed_sinks, numbers.Integral) and 0 <= fixed_sinks <= n_sink,
          f"fixed_sinks must be an integer in [0, {n_sink}], got {fixed_sinks!r}")
    fixed_sinks = int(fixed_sinks)
    # Page ids stay on the device (no host read): the kernels themselves treat an id outside
    # [0, P) as an empty slot, as the reference does.

    q, k_cur, v_cur, k_pool, v_pool = (t.contiguous() for t in (q, k_cur, v_cur, k_pool, v_pool))
    k_scale, v_scale = (None, None) if not scales else (k_scale.contiguous(), v_scale.contiguous())
    local_ids, sink_ids = local_ids.contiguous(), sink_ids.contiguous()
    arch = device_arch(device)
    if k_pool.dtype == torch.float8_e4m3fn:
        V.check_page_arch("fp8", arch)
    dtype = _DTYPES[q.dtype]
    tiles = tiles or V.attention_tiles(arch, dim, dtype, pages)
    block_d = max(16, V.next_pow2(dim))
    # bf16 rounding is the identity on a bf16 pool: compile the lean variant.
    round_sinks = bool(sink_kv_bf16) and q.dtype != torch.bfloat16

    splits = gate_splits or V.gate_splits(arch)
    partial = torch.empty((n_sink + n_local + 2, heads, splits, dim), dtype=torch.float32, device=device)
    ratios = torch.zeros((n_sink,), dtype=torch.float32, device=device)
    out = torch.empty_like(q)
    if n_sink > 0:
        launch_gate(q, k_cur, k_pool, local_ids, sink_ids, fixed_sinks, round_sinks, partial, ratios, arch,
                    k_scale, pages)
    gsa_k.paged_attention[(V.cdiv(tokens, tiles.block_m), heads)](
        q, k_cur, v_cur, k_pool, v_pool, local_ids, sink_ids, ratios, out,
        float(threshold), dim ** -0.5, tokens, heads, n_local, n_sink, fixed_sinks, k_pool.shape[0],
        k_scale, v_scale,
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        SINK_BF16=round_sinks, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PAGES=pages,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages)
    return out, ratios


def launch_gate(q: Tensor, k_cur: Tensor, k_pool: Tensor, local_ids: Tensor, sink_ids: Tensor, fixed_sinks: int,
                round_sinks: bool, partial: Tensor, ratios: Tensor, arch: int | None,
                k_scale: Tensor | None = None, pages: str = "same") -> None:
    """The gate's two kernels (partial sums, then the decision) into `ratios`; `partial` is the
    float32 workspace [n_sink + n_local + 2, H, splits, D] and sets the number of splits; `pages`
    and `k_scale` as `page_mode` and the kernels' docstring say.
    Shared by `gated_sink_attention` and the GPU check's timing of the gate alone."""
    tokens, heads, dim = q.shape
    n_sink, n_local = sink_ids.numel(), local_ids.numel()
    splits = partial.shape[2]
    block_d = max(16, V.next_pow2(dim))
    gsa_k.gate_partial_sums[(n_sink + n_local + 2, heads, splits)](
        q, k_cur, k_pool, local_ids, sink_ids, partial,
        tokens, heads, n_local, n_sink, fixed_sinks, V.cdiv(tokens, splits), k_pool.shape[0], k_scale,
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_T=V.gate_block_t(arch), SINK_BF16=round_sinks, PAGES=pages,
        num_warps=V.GATE_WARPS)
    gsa_k.gate_decide[(n_sink,)](
        partial, local_ids, sink_ids, ratios, tokens, heads, n_local, n_sink, k_pool.shape[0],
        HEAD_DIM=dim, BLOCK_D=block_d, BLOCK_H=V.next_pow2(heads), N_SPLIT=splits, num_warps=V.DECIDE_WARPS)


def retrieve_sinks(
    bank_feats: Tensor, bank_start: Tensor, queries: Tensor, query_valid: Tensor,
    current_start: Tensor | int, window_frames: Tensor | int, sink_size: int, k: int,
) -> tuple[Tensor, Tensor]:
    """RetrieveSinks with the Triton kernels.

    bank_feats float32 [C, F]; bank_start int64 [C] (-1 = empty); queries
    float32 [Q, F]; query_valid int32 [Q] (1 valid, 0 not); current_start, window_frames int64
    [] (tensors stay on the device; ints are uploaded). Returns slots int64 [k]
    (-1 past the eligible entries) and float32 scores [k] (0 there).
    """
    device = _check_device(bank_feats, bank_start, queries, query_valid)
    _need(bank_feats.dim() == 2 and queries.dim() == 2 and queries.shape[1] == bank_feats.shape[1],
          f"bank_feats must be [C, F] and queries [Q, F], got {tuple(bank_feats.shape)} and {tuple(queries.shape)}")
    capacity, feat = bank_feats.shape
    n_query = queries.shape[0]
    _need(bank_feats.dtype == torch.float32 and queries.dtype == torch.float32,
          f"bank_feats and queries must be float32, got {bank_feats.dtype} and {queries.dtype}")
    _need(bank_start.dtype == torch.int64 and tuple(bank_start.shape) == (capacity,),
          f"bank_start must be int64 [{capacity}], got {bank_start.dtype} {tuple(bank_start.shape)}")
    _need(query_valid.dtype == torch.int32 and tuple(query_valid.shape) == (n_query,),
          f"query_valid must be int32 [{n_query}] (1 valid, 0 not), got {query_valid.dtype} "
          f"{tuple(query_valid.shape)}")
    _need(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1,
          f"k must be an integer >= 1, got {k!r}")
    _need(isinstance(sink_size, numbers.Integral) and sink_size >= 0,
          f"sink_size must be an integer >= 0, got {sink_size!r}")
    k, sink_size = int(k), int(sink_size)
    V.check_retrieval(capacity, k)

    def scalar(x):
        return x.reshape(()).to(device=device, dtype=torch.int64) if isinstance(x, Tensor) else \
            torch.tensor(int(x), dtype=torch.int64, device=device)

    cur, win = scalar(current_start), scalar(window_frames)
    bank_feats, bank_start, queries, query_valid = (
        t.contiguous() for t in (bank_feats, bank_start, queries, query_valid))
    scores_ws = torch.empty((max(capacity, 1),), dtype=torch.float32, device=device)
    slots = torch.empty((k,), dtype=torch.int64, device=device)
    top = torch.empty((k,), dtype=torch.float32, device=device)
    if capacity > 0:
        rs_k.retrieve_scores[(V.cdiv(capacity, V.RETRIEVE_BLOCK_C),)](
            bank_feats, bank_start, queries, query_valid, cur, win, scores_ws,
            capacity, feat, n_query, int(sink_size),
            BLOCK_C=V.RETRIEVE_BLOCK_C, BLOCK_F=V.RETRIEVE_BLOCK_F, BLOCK_Q=V.RETRIEVE_BLOCK_Q, num_warps=V.RETRIEVE_SCORES_WARPS)
    rs_k.retrieve_topk[(1,)](scores_ws, slots, top, capacity, k,
                             BLOCK_C=V.RETRIEVE_TOPK_BLOCK_C, num_warps=V.RETRIEVE_TOPK_WARPS)
    return slots, top
