"""Which kernel variants exist and how each is launched: the single table shared by
the launch wrappers (interpreter and JIT), the ahead-of-time compiler and the
TensorRT plugin (through the kernel manifest).

A variant = kernel x dtype x head dim (x heads for the gate) x feature flags x
tile config. Tile configs are chosen per architecture so that the 1.3B variants
(head dim 128, bf16 / fp16) use tensor cores and spill nothing; the committed
static report (docs/kernels-report.md) shows the result for each target.
Torch-free and Triton-free: the manifest and the C++ side read these rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DysinkError

# Supported ranges (the kernels are written and tested for these).
HEAD_DIM_RANGE = (16, 128)        # above 128 the 16-bit tiles spill (sm_80: 11 KB at 256) and exceed sm_86/89/120 shared memory
MAX_BANK_CAPACITY = 1024          # retrieve_topk holds all scores in one tile
MAX_TOP_K = 8
RETRIEVE_TOPK_BLOCK_C = MAX_BANK_CAPACITY
RETRIEVE_BLOCK_C, RETRIEVE_BLOCK_F, RETRIEVE_BLOCK_Q = 64, 64, 4
GATE_SPLITS = 8                   # gate_partial_sums: programs per (slot, head) on a GPU (grid dim 2)
INTERPRETER_GATE_SPLITS = 1       # the interpreter runs programs one by one: fewer is faster

# ONNX / graph dtype names -> Triton signature dtype names.
TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

ARCHS = (80, 86, 87, 89, 90, 100, 110, 120)   # compute capability x 10 that we compile for
FP8_MIN_ARCH = 89                 # float8e4nv loads and conversions: Ada (sm_89) and newer (not Orin, sm_87)
# Page storage of `kv_cache_dtype` (ops/kv_pages.py) -> Triton pointer type of the pools (None: the model's).
PAGE_TRITON_TYPES = {"auto": None, "bf16": "bf16", "int8": "i8", "fp8": "fp8e4nv"}


def check_page_arch(kv_cache_dtype: str, arch: int | None) -> None:
    """fp8 pages need sm_89 or newer (Triton's float8e4nv); int8 and bf16 pages run everywhere."""
    if kv_cache_dtype == "fp8" and arch is not None and arch < FP8_MIN_ARCH:
        raise DysinkError(f"--kv-cache-dtype fp8 needs compute capability {FP8_MIN_ARCH // 10}.{FP8_MIN_ARCH % 10} "
                          f"or newer for the Triton kernels, this is sm_{arch}; use --kv-cache-dtype int8 "
                          "(every architecture, Jetson Orin included)")
DEFAULT_ARCHS = (80, 87, 90, 100, 110, 120)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Tiles:
    """Tile config of `paged_attention` (and the warps of the other kernels)."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    @property
    def tag(self) -> str:
        return f"m{self.block_m}n{self.block_n}w{self.num_warps}s{self.num_stages}"


# Interpreter: every tile op is a numpy call with Python overhead, so big tiles (one per
# tiny-preset block) keep CPU tests fast. The kernel tests also run small tiles (ragged
# tails, several tiles per page) and each GPU target's tile config under the interpreter.
INTERPRETER_TILES = Tiles(block_m=128, block_n=128, num_warps=4, num_stages=1)


def attention_tiles(arch: int | None, head_dim: int, dtype: str, pages: str = "same") -> Tiles:
    """Tile config per target. arch None = Triton's CPU interpreter.

    Chosen from the static report (registers, spills, tensor-core
    instructions of the compiled cubins; docs/kernels-report.md) and sweeps
    of it, not from timings (none were possible yet). With Triton 3.7:
    - 16-bit, head dim 128: 128 x 64 tiles spill on sm_80/87/100/120 at 8
      warps (and badly at 4); 128 x 32 tiles with 8 warps stay within 255
      registers with no stack (2 stages on mma.sync targets, where the fp16
      variant's bf16 sink rounding adds pressure; 3 on Blackwell). Hopper's
      warpgroup MMA (HGMMA) keeps 128 x 64 tiles spill-free.
    - 16-bit, head dim <= 64 (the tiny preset): 64 x 32 tiles, 4 warps, 2
      stages are spill-free on every target (64 x 64 spilled on sm_120); with pages in another
      dtype (`pages` "cast" or "scaled": bf16 or 8-bit K/V) those spill 20-44 bytes on sm_80-89,
      64 x 16 tiles do not.
    - float32 pools use exact (IEEE) dots, no tensor cores: 64 x 16 tiles over
      8 warps at head dim 128 (32 x 16 kept a 20-byte spill on sm_110/120),
      32 x 16 at head dim <= 64 (64 x 16 spilled on sm_8x there).
    """
    if arch is None:
        return INTERPRETER_TILES
    if dtype == "float32":
        return Tiles(32, 16, 8, 1) if head_dim <= 64 else Tiles(64, 16, 8, 1)
    if head_dim <= 64:
        return Tiles(64, 32, 4, 2) if pages == "same" else Tiles(64, 16, 4, 2)
    if arch == 90:
        return Tiles(128, 64, 8, 2)
    if arch in (100, 110):
        return Tiles(128, 32, 8, 3)
    return Tiles(128, 32, 8, 2)


GATE_WARPS = 4
DECIDE_WARPS = 8
RETRIEVE_SCORES_WARPS, RETRIEVE_TOPK_WARPS = 4, 8


def gate_block_t(arch: int | None) -> int:
    return 128 if arch is None else 32


def gate_splits(arch: int | None) -> int:
    return INTERPRETER_GATE_SPLITS if arch is None else GATE_SPLITS


def gate_workspace_floats(n_sink: int, n_local: int, heads: int, head_dim: int, splits: int = GATE_SPLITS) -> int:
    """float32 elements of the gate's workspace: [n_sink + n_local + 2, heads, splits, head_dim]."""
    return (n_sink + n_local + 2) * heads * splits * head_dim


def check_head_dim(head_dim: int) -> None:
    lo, hi = HEAD_DIM_RANGE
    if not lo <= head_dim <= hi:
        raise DysinkError(f"the Triton kernels support head dims {lo}..{hi}, got {head_dim}; "
                          "use --kernels reference for this model")


def check_retrieval(capacity: int, k: int) -> None:
    if capacity > MAX_BANK_CAPACITY:
        raise DysinkError(f"the retrieval kernel supports a bank capacity up to {MAX_BANK_CAPACITY}, "
                          f"got {capacity}; lower bank_capacity or use --kernels reference")
    if k > MAX_TOP_K:
        raise DysinkError(f"the retrieval kernel supports top_k up to {MAX_TOP_K}, got {k}; "
                          "lower top_k or use --kernels reference")
