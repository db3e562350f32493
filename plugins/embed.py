"""Turn a kernel directory (`dysink-export kernels`) into the C++ source that embeds its cubins
in libdysink_plugins.so: the bytes through the assembler's `.incbin`, the launch table the
plugins select from (plugins/cpp/src/kernel_table.h: dtype, head dim, heads, sink rounding, page
type, launch config), and the architectures `--arch` accepts (for the library's missing-architecture
message)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DysinkError
from . import variants as V
from .aot import load_manifest

_DTYPE_CODE = {None: -1, "float32": 0, "float16": 1, "bfloat16": 2}
# kernels.json key "pages" -> KPages (kernel_table.h); no key: the model dtype's pages.
PAGE_CODE = {"auto": 0, "bf16": 1, "int8": 2, "fp8": 3}
# The arguments the plugin passes (gated_sink_attention_plugin.cpp's enqueue), in launch order, before
# the two scratch pointers: a kernels.json that lists others is refused here, not at the first launch.
_GATE_ARGS = ["q", "k_cur", "k_pool", "local_ids", "sink_ids", "partial", "L", "H", "n_local", "n_sink", "fixed_sinks",
              "tokens_per_split", "P"]
_ATTENTION_ARGS = ["q", "k_cur", "v_cur", "k_pool", "v_pool", "local_ids", "sink_ids", "ratios", "out", "threshold",
                   "sm_scale", "L", "H", "n_local", "n_sink", "fixed_sinks", "P"]


def plugin_args(kernel: str, pages: str) -> list[str] | None:
    """The argument names the plugin launches `kernel` with for this page type (None: not checked):
    int8 / fp8 pages add k_scale (and v_scale) right after P."""
    scaled = pages in ("int8", "fp8")
    if kernel == "gate_partial_sums":
        return _GATE_ARGS + (["k_scale"] if scaled else [])
    if kernel == "paged_attention":
        return _ATTENTION_ARGS + (["k_scale", "v_scale"] if scaled else [])
    return None


def _c_string(text: str) -> str:
    return json.dumps(str(text))   # a JSON string literal is a valid C string literal for these names


def embedded_source(kernel_dir: str | Path) -> str:
    root = Path(kernel_dir).resolve()
    manifest = load_manifest(root)
    asm, rows = [], []
    for i, e in enumerate(manifest["kernels"]):
        if e["global_scratch_bytes"] or e["profile_scratch_bytes"]:
            raise DysinkError(f"{e['variant']} needs {e['global_scratch_bytes']} bytes of global scratch; the plugin "
                              "passes null scratch pointers: this Triton version is not supported, use triton==3.7.1")
        launch = e.get("launch", {})
        if launch.get("num_ctas", 1) != 1 or launch.get("cooperative") or launch.get("pdl") or \
                launch.get("tensor_descriptors"):
            raise DysinkError(f"{e['variant']} needs a launch the plugin does not do ({launch}); "
                              "use triton==3.7.1 and this version's tile configs")
        key, const = e["key"], e["constexprs"]
        pages = key.get("pages", "auto")
        if pages not in PAGE_CODE:
            raise DysinkError(f"{e['variant']} has page type {pages!r}, which this version's plugins do not know "
                              f"({', '.join(PAGE_CODE)}); recompile the kernels with this version's "
                              "dysink-export kernels")
        want = plugin_args(e["kernel"], pages)
        got = [a["name"] for a in e["args"][:-2]]
        if want is not None and got != want:
            raise DysinkError(f"{e['variant']} takes the arguments {', '.join(got)}; the plugin launches it with "
                              f"{', '.join(want)}: recompile the kernels with this version's dysink-export kernels")
        path = (root / e["file"]).as_posix()
        if '"' in path or "\\" in path:
            raise DysinkError(f"the kernel directory path {root} contains a quote or backslash; move it")
        label = f"dysink_cubin_{i}"
        asm.append(f'    ".balign 16\\n.hidden {label}\\n.globl {label}\\n{label}:\\n.incbin \\"{path}\\"\\n'
                   f'.hidden {label}_end\\n.globl {label}_end\\n{label}_end:\\n"')
        n_split = V.GATE_SPLITS if e["kernel"] in ("gate_partial_sums", "gate_decide") else 0
        if e["kernel"] == "gate_decide" and const.get("N_SPLIT") != V.GATE_SPLITS:
            raise DysinkError(f"{e['variant']} was compiled with N_SPLIT {const.get('N_SPLIT')}, the plugin "
                              f"launches {V.GATE_SPLITS}; recompile the kernels with this version")
        rows.append("    {" + ", ".join([
            _c_string(e["kernel"]), str(e["arch"]), str(_DTYPE_CODE[key.get("dtype")]), str(key.get("head_dim", 0)),
            str(key.get("heads", 0)), str(key.get("sink_bf16", -1)), str(PAGE_CODE[pages]), str(e["num_warps"]),
            str(e["shared_bytes"]),
            str(e["global_scratch_bytes"]), str(e["profile_scratch_bytes"]), str(const.get("BLOCK_M", 0)),
            str(const.get("BLOCK_C", 0)), str(n_split), str(len(e["args"]) - 2), _c_string(e["symbol"]), f"{label}",
            f"static_cast<size_t>({label}_end - {label})"]) + "},")
    externs = "\n".join(f'extern "C" unsigned char const dysink_cubin_{i}[], dysink_cubin_{i}_end[];'
                        for i in range(len(rows)))
    return f"""// Generated by dysink-export plugins from {root / 'kernels.json'}: do not edit.
// Triton {manifest['triton_version']}; model {manifest['model']}; archs {manifest['archs']}.
#include "kernel_table.h"

__asm__(
    ".section .rodata\\n"
{chr(10).join(asm)}
    ".previous\\n");

{externs}

namespace dysink
{{
KernelImage const kKernelImages[] = {{
{chr(10).join(rows)}
}};
int32_t const kNumKernelImages = {len(rows)};
char const* const kKernelsTritonVersion = {_c_string(manifest['triton_version'])};
int32_t const kCompilableArchs[] = {{{', '.join(str(a) for a in V.ARCHS)}}};
int32_t const kNumCompilableArchs = {len(V.ARCHS)};
}} // namespace dysink
"""
