"""`scripts/gpu-check.sh --prepare DIR`: build, without a GPU, everything the kit's stages need.

The cubins (`dysink-export kernels`, tiny and 1.3B presets, every precision), the plugin library
(`dysink-export plugins`) when TensorRT headers are given, the TensorRT-free plugin harness when this
checkout has one (plugins/harness/: its cases, inputs and the references' outputs computed here, and
the program), the CPU reference of stage c (a 12-block tiny torch stream), and kit.json. The kit is written whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..atomic import staged_directory
from ..config import model_preset
from ..errors import DysinkError
from ..graphs import PRECISIONS
from ..plugins import aot
from ..plugins.build import AUTOREG_LIBRARY, LIBRARY, build_library, find_tensorrt_include, \
    tensorrt_header_version
from . import kit as K
from .harness_stage import prepare_harness

KIT_MODELS = ("tiny", "wan2.1-t2v-1.3b")
STREAM_BLOCKS = 12


def tensorrt_include(explicit: str | None) -> tuple[Path | None, str]:
    """The headers to build with: --tensorrt-include, else the first of $DYSINK_TRT_INCLUDE_DIRS, else
    $TensorRT_INCLUDE_DIR / $TensorRT_ROOT / the usual folders -> (folder or None, why not)."""
    if explicit:
        return find_tensorrt_include(explicit), ""
    listed = [p for p in os.environ.get("DYSINK_TRT_INCLUDE_DIRS", "").split(os.pathsep) if p]
    for p in listed:
        if (Path(p) / "NvInferRuntime.h").is_file():
            return Path(p), ""
    found = find_tensorrt_include(None)
    return found, "" if found else ("no TensorRT headers given: pass --tensorrt-include PATH (the folder holding "
                                    "NvInferRuntime.h) or set DYSINK_TRT_INCLUDE_DIRS")


def compile_kernels(tmp: Path, archs: list[int], log: Callable) -> dict:
    out = {}
    for name in KIT_MODELS:
        model = model_preset(name)
        t0 = time.perf_counter()
        path = aot.compile_kernels(model, model.default_stream(), list(PRECISIONS), archs, tmp / K.KERNELS / name,
                                   log=lambda m, n=name: log(f"  {n}: {m}"))
        manifest = aot.load_manifest(path)
        out[name] = {"dir": f"{K.KERNELS}/{name}", "cubins": len(manifest["kernels"]),
                     "triton": manifest["triton_version"], "precisions": list(PRECISIONS),
                     "command": f"dysink-export kernels --model {name} --arch {','.join(map(str, archs))} "
                                f"--out {K.KERNELS}/{name}", "seconds": round(time.perf_counter() - t0, 1)}
    return out


def build_plugins(tmp: Path, include: Path | None, why_not: str, log: Callable) -> dict:
    if include is None:
        log(f"skipped: {LIBRARY} ({why_not})")
        return {"built": False, "reason": why_not}
    out = {"built": True, "tensorrt_headers": tensorrt_header_version(include), "libraries": {}}
    for name in KIT_MODELS:
        dest = tmp / K.PLUGINS / name
        built = build_library(tmp / K.KERNELS / name, tmp / "build" / name, include, log=lambda m: log(f"  {m}"))
        dest.mkdir(parents=True)
        for lib in (LIBRARY, AUTOREG_LIBRARY):
            shutil.copy2(built.parent / lib, dest / lib)
        out["libraries"][name] = f"{K.PLUGINS}/{name}/{LIBRARY}"
    shutil.rmtree(tmp / "build", ignore_errors=True)
    return out


def stream_reference(tmp: Path, log: Callable, blocks: int) -> dict:
    """The tiny stream of stage c, on this CPU with the PyTorch references."""
    from . import stream_stage    # lazy: torch

    t0 = time.perf_counter()
    data = stream_stage.reference_run(blocks)
    (tmp / K.STREAM_REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    (tmp / K.STREAM_REFERENCE).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    seconds = round(time.perf_counter() - t0, 1)
    log(f"  {len(data['blocks'])} blocks in {seconds} s")
    return {"file": K.STREAM_REFERENCE, "blocks": len(data["blocks"]), "seconds": seconds,
            "settings": data["spec"]}


def prepare(kit: str | os.PathLike, archs_text: str = "90", tensorrt: str | None = None, overwrite: bool = False,
            log: Callable[[str], None] = print, stream_blocks: int = STREAM_BLOCKS) -> dict:
    """Build the kit into `kit`; returns its manifest. `stream_blocks`: the CPU reference stream's
    length (stage c runs as many; fewer only to test the kit itself)."""
    kit = Path(kit)
    archs = aot.parse_archs(archs_text)
    if kit.exists() and not overwrite:
        raise DysinkError(f"{kit} already exists; pass --overwrite to replace it or choose another DIR")
    if kit.exists() and not (kit / K.MANIFEST).is_file():
        raise DysinkError(f"{kit} exists and is not a GPU kit (no {K.MANIFEST}); refusing to replace it")
    include, why_not = tensorrt_include(tensorrt)
    with staged_directory(kit) as tmp:
        contents = {}
        log(f"[1/4] kernels for {', '.join(f'sm_{a}' for a in archs)} (dysink-export kernels)")
        contents["kernels"] = compile_kernels(tmp, archs, log)
        log("[2/4] plugin library (dysink-export plugins)")
        contents["plugins"] = build_plugins(tmp, include, why_not, log)
        log("[3/4] TensorRT-free plugin harness: its cases (inputs + CPU references) and program")
        contents["harness"] = prepare_harness(tmp, include, log)
        log(f"[4/4] CPU reference: {stream_blocks}-block tiny torch stream")
        contents["stream_reference"] = stream_reference(tmp, log, stream_blocks)
        manifest = K.write_manifest(tmp, contents, archs)
        size = manifest["size_bytes"]
        if size > K.SIZE_LIMIT:      # refused before the kit replaces anything
            raise DysinkError(f"the kit would be {size / 2 ** 20:.1f} MiB, over the {K.SIZE_LIMIT >> 20} MiB a lent "
                              "machine takes with the working tree; prepare fewer architectures")
    return manifest
