"""Ahead-of-time compilation of the Triton kernels to cubins, without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` turns each
kernel variant into a cubin for one architecture. The TensorRT plugin library
embeds those cubins and launches them with the CUDA driver API, so neither
Python nor Triton is needed where engines run. What the launcher needs is
written into `kernels.json` beside the cubins: symbol, architecture, warps,
dynamic shared memory, the argument list in launch order (Triton appends two
pointers, global and profile scratch, after the non-constexpr arguments;
constexpr arguments are baked in and absent), the grid rule, and the
assumptions the compiler was allowed to make (16-byte aligned pointers).

The ptxas Triton runs is its bundled copy unless `TRITON_PTXAS_PATH` (sm_80-90)
or `TRITON_PTXAS_BLACKWELL_PATH` (sm_100 and newer) names another (on a Jetson:
the device toolkit's own). Triton silently falls back to its bundled copy when
that path is not a working ptxas; here that is an error, and the manifest
records which ptxas (path and version) built each architecture.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..atomic import manifest_owned, staged_directory
from ..bundle import confined_file
from ..config import ModelConfig, StreamConfig, model_config_from_dict, stream_config_from_dict
from ..errors import DysinkError
from . import variants as V

MANIFEST = "kernels.json"
FORMAT_VERSION = 1


def _kernel_files(manifest: dict):
    entries = manifest.get("kernels")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict):
            yield entry.get("file")


# What --overwrite may replace in a kernel directory: kernels.json and the cubins it lists.
KERNEL_DIR_OWNED = manifest_owned(MANIFEST, _kernel_files, "a kernel directory")
POINTER_ALIGN = 16

# Argument types of every kernel, in the kernel's own order (constexprs excluded). DT: the model
# dtype; PT: the pools' page type (the model dtype unless --kv-cache-dtype says otherwise). The
# scale pointers exist only in 8-bit page variants; elsewhere they are constexpr None, so today's
# variants keep today's argument lists.
_SCALE_ARGS = {"gate_partial_sums": ("k_scale",), "paged_attention": ("k_scale", "v_scale")}
_I32, _F32 = "i32", "fp32"
ARG_TYPES: dict[str, dict[str, str]] = {
    "gate_partial_sums": {"q": "*DT", "k_cur": "*DT", "k_pool": "*PT", "local_ids": "*i64", "sink_ids": "*i64",
                          "partial": "*fp32", "L": _I32, "H": _I32, "n_local": _I32, "n_sink": _I32,
                          "fixed_sinks": _I32, "tokens_per_split": _I32, "P": _I32, "k_scale": "*fp32"},
    "gate_decide": {"partial": "*fp32", "local_ids": "*i64", "sink_ids": "*i64", "ratios": "*fp32",
                    "L": _I32, "H": _I32, "n_local": _I32, "n_sink": _I32, "P": _I32},
    "paged_attention": {"q": "*DT", "k_cur": "*DT", "v_cur": "*DT", "k_pool": "*PT", "v_pool": "*PT",
                        "local_ids": "*i64", "sink_ids": "*i64", "ratios": "*fp32", "out": "*DT",
                        "threshold": _F32, "sm_scale": _F32, "L": _I32, "H": _I32, "n_local": _I32,
                        "n_sink": _I32, "fixed_sinks": _I32, "P": _I32, "k_scale": "*fp32", "v_scale": "*fp32"},
    "retrieve_scores": {"bank_feats": "*fp32", "bank_start": "*i64", "queries": "*fp32", "query_valid": "*i32",
                        "current_start": "*i64", "window_frames": "*i64", "scores_ws": "*fp32",
                        "C": _I32, "F": _I32, "Q": _I32, "sink_size": _I32},
    "retrieve_topk": {"scores_ws": "*fp32", "slots": "*i64", "top_scores": "*fp32", "C": _I32, "k": _I32},
}
KERNEL_MODULE = {"gate_partial_sums": "gated_sink_attention", "gate_decide": "gated_sink_attention",
                 "paged_attention": "gated_sink_attention", "retrieve_scores": "retrieve_sinks",
                 "retrieve_topk": "retrieve_sinks"}
GRID = {
    "gate_partial_sums": ["n_sink + n_local + 2", "H", "N_SPLIT"],
    "gate_decide": ["n_sink", "1", "1"],
    "paged_attention": ["cdiv(L, BLOCK_M)", "H", "1"],
    "retrieve_scores": ["cdiv(C, BLOCK_C)", "1", "1"],
    "retrieve_topk": ["1", "1", "1"],
}
# What each op launches, in order, and the host-side rules the launcher applies.
OPS = {
    "GatedSinkAttention": {
        "launch": ["gate_partial_sums", "gate_decide", "paged_attention"],
        "rules": {
            "skip_gate_when": "n_sink == 0 (ratios is then empty)",
            "N_SPLIT": V.GATE_SPLITS,     # also gate_decide's constexpr N_SPLIT
            "tokens_per_split": "cdiv(L, N_SPLIT)",
            "workspace_bytes": "4 * (n_sink + n_local + 2) * H * N_SPLIT * HEAD_DIM (gate partial sums)",
            "threshold": "the node's threshold attribute as float32",
            "sm_scale": "1 / sqrt(HEAD_DIM) as float32",
            "P": "k_pool's first dimension (pages); a page id outside [0, P) is an empty slot",
            "pages": "key 'pages' (bf16 | int8 | fp8) on variants whose pools are not in the model dtype; "
                     "int8 / fp8 variants take k_scale (and v_scale) float32 [P, L, H] right after P",
        },
    },
    "RetrieveSinks": {
        "launch": ["retrieve_scores", "retrieve_topk"],
        "rules": {"workspace_bytes": "4 * C (scores)", "C": f"bank capacity <= {V.MAX_BANK_CAPACITY}",
                  "k": f"<= {V.MAX_TOP_K}"},
    },
}


@dataclass(frozen=True)
class Variant:
    """One kernel compiled with one set of constexprs for one architecture."""
    kernel: str
    arch: int
    dtype: str | None                  # graph dtype name of the K/V tensors, None if dtype-free
    constexprs: dict = field(hash=False)
    num_warps: int = 4
    num_stages: int = 1
    key: dict = field(default_factory=dict, hash=False)   # what the launcher matches on
    page_type: str | None = None       # Triton type of the pools when not the model dtype

    @property
    def name(self) -> str:
        parts = [self.kernel] + [f"{k}-{v}" for k, v in sorted(self.key.items())]
        parts += [f"w{self.num_warps}", f"s{self.num_stages}", f"sm{self.arch}"]
        return ".".join(str(p) for p in parts)

    def signature(self) -> dict[str, str]:
        sig = {}
        for arg, ty in ARG_TYPES[self.kernel].items():
            if "PT" in ty:
                ty = ty.replace("PT", self.page_type or V.TRITON_DTYPES[self.dtype])
            sig[arg] = ty.replace("DT", V.TRITON_DTYPES[self.dtype]) if "DT" in ty else ty
        for name in self.constexprs:
            sig[name] = "constexpr"
        return sig


def page_variant_mode(dtype: str, kv_cache_dtype: str) -> tuple[str, str | None]:
    """(the kernels' PAGES constexpr, the pools' Triton type or None) for a model dtype name and a
    --kv-cache-dtype; the same rule as launch.page_mode, by name (no torch here)."""
    if kv_cache_dtype not in V.PAGE_TRITON_TYPES:
        raise DysinkError(f"--kv-cache-dtype must be one of {', '.join(V.PAGE_TRITON_TYPES)}, got {kv_cache_dtype!r}")
    if kv_cache_dtype in ("int8", "fp8"):
        return "scaled", V.PAGE_TRITON_TYPES[kv_cache_dtype]
    if kv_cache_dtype == "auto" or V.PAGE_TRITON_TYPES[kv_cache_dtype] == V.TRITON_DTYPES[dtype]:
        return "same", None
    return "cast", V.PAGE_TRITON_TYPES[kv_cache_dtype]


def _absent_scales(kernel: str, pages: str) -> dict:
    """The scale pointers as constexpr None where the pages carry no scales (today's argument lists)."""
    return {} if pages == "scaled" else {arg: None for arg in _SCALE_ARGS[kernel]}


def kernel_variants(model: ModelConfig, stream: StreamConfig, precisions: list[str], arch: int,
                    kv_cache_dtype: str = "auto") -> list[Variant]:
    """Every variant a bundle of this model / stream / precision / page dtype needs on one architecture."""
    heads, dim = model.dit.heads, model.dit.head_dim
    V.check_head_dim(dim)
    V.check_retrieval(stream.bank_capacity, stream.top_k)
    V.check_page_arch(kv_cache_dtype, arch)
    block_d = max(16, V.next_pow2(dim))
    out: list[Variant] = []
    for precision in precisions:
        dtype = V.PRECISION_DTYPES[precision]
        sink_bf16 = bool(stream.sink_kv_bf16) and dtype != "bfloat16"
        pages, page_type = page_variant_mode(dtype, kv_cache_dtype)
        tiles = V.attention_tiles(arch, dim, dtype, pages)
        base_key = {"dtype": dtype, "head_dim": dim, "sink_bf16": int(sink_bf16)}
        if pages != "same":
            base_key["pages"] = kv_cache_dtype
        out.append(Variant("gate_partial_sums", arch, dtype,
                           {**_absent_scales("gate_partial_sums", pages), "HEAD_DIM": dim, "BLOCK_D": block_d,
                            "BLOCK_T": V.gate_block_t(arch), "SINK_BF16": sink_bf16, "PAGES": pages},
                           V.GATE_WARPS, 1, base_key, page_type))
        out.append(Variant("paged_attention", arch, dtype,
                           {**_absent_scales("paged_attention", pages), "HEAD_DIM": dim, "BLOCK_D": block_d,
                            "BLOCK_M": tiles.block_m, "BLOCK_N": tiles.block_n, "SINK_BF16": sink_bf16,
                            "DOT_PRECISION": "ieee" if dtype == "float32" else "tf32", "PAGES": pages},
                           tiles.num_warps, tiles.num_stages, base_key, page_type))
    out.append(Variant("gate_decide", arch, None,
                       {"HEAD_DIM": dim, "BLOCK_D": block_d, "BLOCK_H": V.next_pow2(heads), "N_SPLIT": V.gate_splits(arch)},
                       V.DECIDE_WARPS, 1,
                       {"head_dim": dim, "heads": heads}))
    out.append(Variant("retrieve_scores", arch, None,
                       {"BLOCK_C": V.RETRIEVE_BLOCK_C, "BLOCK_F": V.RETRIEVE_BLOCK_F, "BLOCK_Q": V.RETRIEVE_BLOCK_Q},
                       V.RETRIEVE_SCORES_WARPS, 1, {}))
    out.append(Variant("retrieve_topk", arch, None, {"BLOCK_C": V.RETRIEVE_TOPK_BLOCK_C}, V.RETRIEVE_TOPK_WARPS, 1, {}))
    return out


@contextmanager
def _compile_mode():
    """Kernel modules loaded with Triton's interpreter off, whatever TRITON_INTERPRET says:
    the AOT path needs real JIT functions even inside an interpreted test run."""
    names = ("TRITON_INTERPRET", "TRITON_ALWAYS_COMPILE", "TRITON_DUMP_PTXAS_LOG")
    saved = {name: os.environ.get(name) for name in names}
    # Always run ptxas (no cache hit) and let it print its -v log: registers, stack and
    # spill bytes come from the very run that produced the cubin.
    os.environ.update({"TRITON_INTERPRET": "0", "TRITON_ALWAYS_COMPILE": "1", "TRITON_DUMP_PTXAS_LOG": "1"})
    try:
        modules = {}
        here = Path(__file__).parent / "triton_kernels"
        for stem in ("gated_sink_attention", "retrieve_sinks"):
            spec = importlib.util.spec_from_file_location(f"_dysink_aot_{stem}", here / f"{stem}.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            modules[stem] = mod
        yield modules
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _triton():
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        raise DysinkError("compiling kernels needs Triton: pip install 'dysink-deploy[kernels]'") from None
    return triton, GPUTarget, ASTSource


def compile_variant(modules: dict, variant: Variant) -> tuple[bytes, dict]:
    """-> (cubin bytes, manifest entry without the file fields)."""
    triton, GPUTarget, ASTSource = _triton()
    fn = getattr(modules[KERNEL_MODULE[variant.kernel]], variant.kernel)
    sig = variant.signature()
    arg_names = list(fn.arg_names)
    if list(sig) != arg_names:
        raise AssertionError(f"{variant.kernel}: signature table {list(sig)} != kernel arguments {arg_names}")
    attrs = {(arg_names.index(a),): [["tt.divisibility", POINTER_ALIGN]] for a, t in sig.items() if t.startswith("*")}
    src = ASTSource(fn=fn, signature=sig, constexprs=dict(variant.constexprs), attrs=attrs)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", variant.arch, 32),
                                      options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    except Exception as exc:  # ptxas / MLIR failures: name the variant, keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DysinkError(f"compiling {variant.name} for sm_{variant.arch} failed: {first}") from exc
    md = compiled.metadata
    args = [{"name": a, "type": t} for a, t in sig.items() if t != "constexpr"]
    args += [{"name": "global_scratch", "type": "*i8", "bytes": int(md.global_scratch_size)},
             {"name": "profile_scratch", "type": "*i8", "bytes": int(md.profile_scratch_size)}]
    entry = {
        "variant": variant.name, "kernel": variant.kernel, "symbol": md.name, "arch": variant.arch,
        "key": dict(variant.key), "constexprs": dict(variant.constexprs),
        "num_warps": int(md.num_warps), "num_stages": variant.num_stages, "threads": 32 * int(md.num_warps),
        "shared_bytes": int(md.shared), "global_scratch_bytes": int(md.global_scratch_size),
        "global_scratch_align": int(getattr(md, "global_scratch_align", 1)),
        "profile_scratch_bytes": int(md.profile_scratch_size), "args": args, "grid": GRID[variant.kernel],
        "pointer_align": POINTER_ALIGN, "ptx_version": getattr(md, "ptx_version", None),
        "ptxas": parse_ptxas_log(log.getvalue()),
        # Launch features the plugin's plain cuLaunchKernel does not provide (all must be off).
        "launch": {"num_ctas": int(getattr(md, "num_ctas", 1)),
                   "cooperative": bool(getattr(md, "launch_cooperative_grid", False)),
                   "pdl": bool(getattr(md, "launch_pdl", False)),
                   "tensor_descriptors": len(getattr(md, "tensordesc_meta", None) or [])},
    }
    return compiled.asm["cubin"], entry


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_variable(arch: int) -> str:
    """The environment variable that selects Triton's ptxas for this architecture."""
    return "TRITON_PTXAS_BLACKWELL_PATH" if arch >= 100 else "TRITON_PTXAS_PATH"


def ptxas_for(arch: int) -> dict:
    """{'path', 'version', 'variable'} of the ptxas Triton will run for `arch`."""
    _triton()
    from triton.backends.nvidia.compiler import get_ptxas

    variable = ptxas_variable(arch)
    try:
        tool = get_ptxas(arch)
    except RuntimeError as exc:
        raise DysinkError(f"no ptxas for sm_{arch}: {exc}; set {variable} to a CUDA toolkit's ptxas") from None
    wanted = os.environ.get(variable)
    if wanted and os.path.realpath(tool.path) != os.path.realpath(wanted):
        raise DysinkError(f"{variable}={wanted} is not a working ptxas (Triton would quietly use its own "
                          f"{tool.path} instead); fix the path or unset {variable}")
    return {"path": tool.path, "version": tool.version, "variable": variable}


def parse_ptxas_log(text: str) -> dict:
    """ptxas -v -> {registers, stack_frame, spill_stores, spill_loads} (None where absent)."""
    used, frame = _PTXAS_USED.search(text), _PTXAS_FRAME.search(text)
    return {"registers": int(used[1]) if used else None,
            "stack_frame": int(frame[1]) if frame else None,
            "spill_stores": int(frame[2]) if frame else None,
            "spill_loads": int(frame[3]) if frame else None}


def parse_archs(text: str) -> list[int]:
    archs = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        digits = part.lower().removeprefix("sm_").removeprefix("sm")
        if not digits.isdigit() or int(digits) not in V.ARCHS:
            raise DysinkError(f"unknown architecture {part!r} in --arch; choose from "
                              f"{','.join(str(a) for a in V.ARCHS)} (compute capability x 10)")
        archs.append(int(digits))
    if not archs:
        raise DysinkError("--arch is empty; give e.g. --arch 87,90")
    return sorted(set(archs))


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def compile_kernels(model: ModelConfig, stream: StreamConfig, precisions: list[str], archs: list[int],
                    out: str | Path, overwrite: bool = False,
                    log: Callable[[str], None] = lambda m: None, kv_cache_dtype: str = "auto") -> Path:
    """Compile every variant for every architecture into `out` (written whole or not at all).

    In a process where Triton's interpreter is on (the test suite), the interpreter has patched
    triton.language and the compiler cannot run in-process: the work goes to a child process.
    """
    if _interpreter_on():
        return _compile_in_child(model, stream, precisions, archs, out, overwrite, log, kv_cache_dtype)
    triton, _, _ = _triton()
    out = Path(out)
    if out.exists() and not overwrite:
        raise DysinkError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.exists() and not (out / MANIFEST).is_file():
        raise DysinkError(f"{out} exists and is not a kernel directory (no {MANIFEST}); "
                          "refusing to replace it, choose another --out")
    older = [a for a in archs if kv_cache_dtype == "fp8" and a < V.FP8_MIN_ARCH]   # before any work
    if older:
        raise DysinkError(f"--kv-cache-dtype fp8 needs sm_{V.FP8_MIN_ARCH} or newer, --arch names "
                          f"{','.join(str(a) for a in older)}; give --arch "
                          f"{','.join(str(a) for a in archs if a >= V.FP8_MIN_ARCH) or '89,90'} or use --kv-cache-dtype int8")
    ptxas = {f"sm{arch}": ptxas_for(arch) for arch in archs}   # a bad path fails before any work
    with staged_directory(out, KERNEL_DIR_OWNED, "dysink-export kernels") as tmp:
        entries = []
        with _compile_mode() as modules:
            for arch in archs:
                t0 = time.perf_counter()
                variants = kernel_variants(model, stream, precisions, arch, kv_cache_dtype)
                (tmp / f"sm{arch}").mkdir()
                for variant in variants:
                    cubin, entry = compile_variant(modules, variant)
                    rel = f"sm{arch}/{variant.name}.cubin"
                    (tmp / rel).write_bytes(cubin)
                    entry.update(file=rel, bytes=len(cubin), sha256=hashlib.sha256(cubin).hexdigest())
                    entries.append(entry)
                log(f"sm_{arch}: {len(variants)} kernels in {time.perf_counter() - t0:.1f}s")
        manifest = {
            "format_version": FORMAT_VERSION, "triton_version": triton.__version__,
            "ptxas": ptxas,
            "model": model.name, "heads": model.dit.heads, "head_dim": model.dit.head_dim,
            "precisions": list(precisions), "sink_kv_bf16": bool(stream.sink_kv_bf16),
            "kv_cache_dtype": kv_cache_dtype,
            "archs": list(archs), "ops": OPS, "kernels": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def _compile_in_child(model, stream, precisions, archs, out, overwrite, log, kv_cache_dtype) -> Path:
    import subprocess
    import sys

    spec = {"model": model.to_dict(), "stream": stream.to_dict(), "precisions": list(precisions),
            "archs": list(archs), "out": str(out), "overwrite": bool(overwrite), "kv_cache_dtype": kv_cache_dtype}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "dysink_deploy.plugins.aot", json.dumps(spec)],
                         capture_output=True, text=True, env=env)
    for line in res.stderr.splitlines():
        if line.startswith("log: "):
            log(line[5:])
    if res.returncode != 0:
        errors = [ln[7:] for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        raise DysinkError(errors[0] if errors else f"kernel compilation failed: {res.stderr.strip()[-300:]}")
    return Path(out)


def _main(argv: list[str]) -> int:
    """Child-process entry of `compile_kernels` (see there)."""
    import sys

    spec = json.loads(argv[0])
    try:
        compile_kernels(model_config_from_dict(spec["model"]), stream_config_from_dict(spec["stream"]),
                        spec["precisions"], spec["archs"], spec["out"], spec["overwrite"],
                        log=lambda m: print(f"log: {m}", file=sys.stderr), kv_cache_dtype=spec["kv_cache_dtype"])
    except DysinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def load_manifest(path: str | Path) -> dict:
    """Read and check a kernel directory: manifest present, every cubin there with its sha256."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DysinkError(f"{root} has no {MANIFEST}; create it with dysink-export kernels --out {root}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DysinkError(f"{root / MANIFEST} is unreadable ({exc}); recreate it with dysink-export kernels") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DysinkError(f"{root / MANIFEST} has format version {manifest.get('format_version')!r}, "
                          f"this version reads {FORMAT_VERSION}; recreate it with dysink-export kernels")
    redo = f"recreate it with dysink-export kernels --out {root} --overwrite"
    for entry in manifest.get("kernels", []):
        file = confined_file(root, entry.get("file"), "a kernel", redo)
        if file is None or hashlib.sha256(file.read_bytes()).hexdigest() != entry.get("sha256"):
            raise DysinkError(f"{root / str(entry.get('file'))} is missing or does not match its sha256 in "
                              f"{MANIFEST}; {redo}")
    return manifest


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
