"""`dysink-export kernels`: compile the Triton kernels to cubins for every target, and report on them."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click

from ..atomic import staged_directory
from ..bundle import Bundle
from ..cli.common import shared, spec_option
from ..config import model_preset
from ..errors import DysinkError
from ..graphs import PRECISIONS
from . import aot, report as rep, variants as V
from .build import (AUTOREG_LIBRARY, HEADERS_HINT, LIBRARY, build_library, find_tensorrt_include, plugin_dir_files,
                    tensorrt_header_version, tensorrt_target)


def _target_options(fn):
    """What to compile for: a bundle, or a model preset with precisions; and the architectures."""
    for option in reversed([
        shared("--bundle", "bundle_path", type=click.Path(), default=None,
               note="Compile what it needs (its model, stream and precision)."),
        shared("--model", "model_name", default=None, note="Or: what this preset needs at its released settings."),
        shared("--precision", "precisions", type=click.Choice(PRECISIONS), multiple=True,
               note="With --model; repeatable.", default_text="all"),
        shared("--sink-kv-bf16/--no-sink-kv-bf16", default=True, note="With --model."),
        spec_option("kv_cache_dtype", default=None, default_text="auto; with --bundle: the bundle's"),
        shared("--arch", "arch_text", default=",".join(str(a) for a in V.DEFAULT_ARCHS),
               note=f"Known: {','.join(str(a) for a in V.ARCHS)}."),
    ]):
        fn = option(fn)
    return fn


@click.command("kernels")
@_target_options
@click.option("--out", type=click.Path(), default=None,
              help="Kernel directory to create (cubins + kernels.json). With --report alone: compiled into a "
                   "temporary folder, removed afterwards.")
@shared("--overwrite", is_flag=True)
@click.option("--report", is_flag=True,
              help="Print registers, spills, shared memory and tensor-core instructions per cubin "
                   "(on an existing --out without --overwrite: report only, no compile).")
@shared("--markdown", type=click.Path(), default=None)
def kernels_command(bundle_path, model_name, precisions, sink_kv_bf16, kv_cache_dtype, arch_text, out, overwrite,
                    report, markdown):
    """Compile the GatedSinkAttention / RetrieveSinks kernels to cubins, no GPU needed.

    Every kernel variant a bundle needs (dtype x head dim x tile config) is
    compiled for each architecture with Triton's ahead-of-time path; the
    TensorRT plugin library embeds the cubins. Set TRITON_PTXAS_PATH (sm_80-90)
    or TRITON_PTXAS_BLACKWELL_PATH (sm_100 and newer, e.g. Jetson Thor) to use
    another ptxas than Triton's own (on a Jetson: the device toolkit's,
    /usr/local/cuda/bin/ptxas); kernels.json records which one built each
    architecture.
    """
    t0 = time.perf_counter()
    if out is None:
        if not (report or markdown):
            raise DysinkError("give --out DIR for the cubins (or --report alone to compile into a temporary "
                              "folder and only print the report)")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dysink-kernels-") as tmp:
            kernels_command.callback(bundle_path, model_name, precisions, sink_kv_bf16, kv_cache_dtype, arch_text,
                                     str(Path(tmp) / "kernels"), overwrite, report, markdown)
        return
    out_path = Path(out)
    report_only = report and out_path.exists() and not overwrite
    if not report_only:
        model, stream, precisions, kv_cache_dtype = _what_to_compile(bundle_path, model_name, list(precisions),
                                                                     sink_kv_bf16, kv_cache_dtype)
        archs = aot.parse_archs(arch_text)
        if out_path.exists() and not overwrite:
            raise DysinkError(f"{out_path} already exists; pass --overwrite to replace it, --report to report "
                              "on it, or choose another --out")
        click.echo(f"compiling {model.name} ({', '.join(precisions)}, {kv_cache_dtype} pages) for "
                   f"{', '.join(f'sm_{a}' for a in archs)} into {out_path}", err=True)
        aot.compile_kernels(model, stream, precisions, archs, out_path, overwrite=overwrite,
                            log=lambda m: click.echo(m, err=True), kv_cache_dtype=kv_cache_dtype)
    manifest = aot.load_manifest(out_path)
    click.echo(f"{len(manifest['kernels'])} cubins in {out_path} (triton {manifest['triton_version']})")
    ok = True
    if report or markdown:
        rows = rep.report_rows(manifest, out_path)
        for line in rep.format_report(rows):
            click.echo(line)
        if markdown:
            Path(markdown).write_text("\n".join(rep.format_report(rows, markdown=True)) + "\n")
        ok = rep.report_ok(rows)
        if not ok:
            click.echo("static targets missed: a kernel spills, or a 16-bit attention kernel has no "
                       "tensor-core instruction (see the NO rows)", err=True)
    verdict = "PASSED" if ok else "FAILED"
    click.echo(f"{verdict} | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")
    if not ok:
        sys.exit(1)


def _what_to_compile(bundle_path, model_name, precisions, sink_kv_bf16, kv_cache_dtype):
    """-> (model, stream, precisions, kv_cache_dtype) of --bundle, or of --model and its flags."""
    if bool(bundle_path) == bool(model_name):
        raise DysinkError("give exactly one of --bundle or --model")
    if bundle_path:
        if precisions:
            raise DysinkError("--precision goes with --model; a bundle has its own precision")
        bundle = Bundle.load(bundle_path)
        if kv_cache_dtype not in (None, bundle.kv_cache_dtype):
            held = "model-precision (auto)" if bundle.kv_cache_dtype == "auto" else bundle.kv_cache_dtype
            raise DysinkError(f"bundle {bundle.path} stores {held} K/V pages; drop --kv-cache-dtype "
                              f"{kv_cache_dtype} (a bundle has its own) or re-export it with that page dtype")
        return bundle.model, bundle.stream, [bundle.precision], bundle.kv_cache_dtype
    model = model_preset(model_name)
    return (model, model.default_stream(sink_kv_bf16=sink_kv_bf16), precisions or list(PRECISIONS),
            kv_cache_dtype or "auto")


@click.command("plugins")
@_target_options
@click.option("--tensorrt-include", type=click.Path(), default=None,
              help="Folder holding NvInferRuntime.h. [default: $TensorRT_INCLUDE_DIR, $TensorRT_ROOT/include, "
                   "/usr/include/<arch>-linux-gnu]")
@click.option("--out", type=click.Path(), required=True,
              help="Directory to create: libdysink_plugins.so, libdysink_plugins_autoreg.so and kernels/ (the "
                   "embedded cubins and kernels.json); the CMake build folder is not kept.")
@shared("--overwrite", is_flag=True)
def plugins_command(bundle_path, model_name, precisions, sink_kv_bf16, kv_cache_dtype, arch_text, tensorrt_include,
                    out, overwrite):
    """Build libdysink_plugins.so: compile the kernels, embed the cubins, build the IPluginV3 library.

    Needs cmake, a C++17 compiler, the CUDA toolkit's headers and TensorRT's headers (no TensorRT
    or GPU at build time); the library runs only with a TensorRT of the headers' major version.
    Give libdysink_plugins.so to trtexec --dynamicPlugins, IPluginRegistry::loadLibrary or ONNX
    Runtime's trt_extra_plugin_lib_paths; give libdysink_plugins_autoreg.so, which registers the
    plugins when it is loaded, to polygraphy --plugins or ctypes.CDLL (after importing tensorrt).
    Set TRITON_PTXAS_PATH (sm_80-90) or TRITON_PTXAS_BLACKWELL_PATH (sm_100 and newer) to compile
    with another ptxas (on a Jetson: the device toolkit's).
    """
    import shutil

    t0 = time.perf_counter()
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise DysinkError(f"{out_path} already exists; pass --overwrite to replace it or choose another --out")
    if out_path.exists() and not (out_path / LIBRARY).is_file():
        raise DysinkError(f"{out_path} exists and holds no {LIBRARY}; refusing to replace it, choose another --out")
    include = find_tensorrt_include(tensorrt_include)
    if include is None:
        raise DysinkError(f"TensorRT headers not found; {HEADERS_HINT}")
    model, stream, precisions, kv_cache_dtype = _what_to_compile(bundle_path, model_name, list(precisions),
                                                                 sink_kv_bf16, kv_cache_dtype)
    archs = aot.parse_archs(arch_text)
    with staged_directory(out_path, plugin_dir_files, "dysink-export plugins") as tmp:
        click.echo(f"[1/3] kernels: {model.name} ({', '.join(precisions)}, {kv_cache_dtype} pages) for "
                   f"{', '.join(f'sm_{a}' for a in archs)}", err=True)
        aot.compile_kernels(model, stream, precisions, archs, tmp / "kernels", kv_cache_dtype=kv_cache_dtype,
                            log=lambda m: click.echo(f"  {m}", err=True))
        click.echo(f"[2/3] embedding into the library source; TensorRT {tensorrt_header_version(include)} headers "
                   f"from {include}", err=True)
        click.echo("[3/3] cmake build", err=True)
        built = build_library(tmp / "kernels", tmp / "build", include)
        for name in (LIBRARY, AUTOREG_LIBRARY):
            shutil.copy2(built.parent / name, tmp / name)
        # The build directory names the temporary path; rebuild it in place on the next run.
        shutil.rmtree(tmp / "build", ignore_errors=True)
    click.echo(f"wrote {out_path / LIBRARY}")
    click.echo(f"wrote {out_path / AUTOREG_LIBRARY}")
    click.echo(f"{LIBRARY} {tensorrt_target(include)}")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")
