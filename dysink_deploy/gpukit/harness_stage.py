"""Stage b: the AOT cubins launched by libdysink_plugins.so's own `enqueue`, TensorRT-free.

The plugin harness (plugins/harness/, its Python side plugins/harness.py) plays TensorRT's part: it
dlopens the library, creates each plugin from the ONNX node's attributes, walks the IPluginV3 build
and runtime calls and enqueues on a CUDA stream; its outputs are compared with the PyTorch references
computed on the CPU at --prepare. What it cannot prove: TensorRT's ONNX parser, builder, tactic
choice and plugin registry (a real TensorRT does those).

`prepare_harness` (at --prepare, no GPU): the cases of the tiny preset per precision, and when
TensorRT headers are given the program and a copy of the headers (to rebuild it there with the
device's CMake and CUDA toolkit when the prebuilt one does not run).
`run_plugin_harness(kit_dir, out_dir, log)` (stage b): skips with a reason when the kit has no
plugin library, no harness program and no way to build one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import DysinkError
from ..graphs import PRECISIONS
from ..plugins import harness as H
from ..plugins.build import LIBRARY
from . import kit as K
from .device import device_info
from .result import FAILED, PASSED, SKIPPED, StageResult

CASE_MODEL = "tiny"           # contract shapes of this preset: small enough to ship (1.3B pools are GBs)
USAGE_EXIT = 2                # the program's answer to a bad command line: proves it starts


def prepare_harness(kit: Path, include: Path | None, log: Callable[[str], None]) -> dict:
    """Into `kit`: KIT/harness/cases/<precision>/<op>/, and with headers KIT/harness/bin/ + tensorrt-include/."""
    if not (H.HARNESS_DIR / "CMakeLists.txt").is_file():
        reason = f"this checkout has no {H.HARNESS_DIR.name}/ sources (plugins/harness/)"
        log(f"skipped: harness ({reason})")
        return {"included": False, "reason": reason}
    info: dict = {"included": True, "model": CASE_MODEL, "cases": {}}
    try:
        for precision in PRECISIONS:
            made = H.write_cases(kit / K.HARNESS_CASES / precision, CASE_MODEL, None, precision, seed=0)
            info["cases"][precision] = sorted(made)
        log(f"  cases: {CASE_MODEL} x {', '.join(PRECISIONS)} ({', '.join(H.OPS)})")
    except (DysinkError, ImportError, AttributeError, OSError) as exc:
        info.update(included=False, reason=f"the harness cases could not be written: {exc}")
        log(f"skipped: harness ({info['reason']})")
        return info
    if include is None:
        info.update(binary=None, reason="no TensorRT headers: the harness program (and the plugin library) are built "
                                        "from them; give --tensorrt-include PATH")
        log(f"skipped: harness program ({info['reason']})")
        return info
    with tempfile.TemporaryDirectory(prefix="dysink-harness-build-") as build:
        try:
            binary = H.build_harness(Path(build), include)
        except DysinkError as exc:
            info.update(binary=None, reason=f"not built here: {exc}")
            log(f"  harness program not built here ({exc}); stage b builds it there from the headers")
        else:
            (kit / K.HARNESS_BIN).mkdir(parents=True)
            shutil.copy2(binary, kit / K.HARNESS_BIN / H.BINARY)
            info["binary"] = f"{K.HARNESS_BIN}/{H.BINARY}"
            log(f"  built {info['binary']}")
    shutil.copytree(include, kit / K.HARNESS_HEADERS, ignore=lambda d, names: [
        n for n in names if not (n.endswith(".h") or (Path(d) / n).is_dir())])
    info["tensorrt_headers"] = K.HARNESS_HEADERS
    return info


def _starts(binary: Path) -> bool:
    try:
        return subprocess.run([str(binary)], capture_output=True, timeout=30).returncode == USAGE_EXIT
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_binary(kit_dir: Path, out_dir: Path, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The kit's program if it starts here, else one built here from the kit's headers -> (path, why not)."""
    prebuilt = kit_dir / K.HARNESS_BIN / H.BINARY
    if prebuilt.is_file() and _starts(prebuilt):
        return prebuilt, ""
    headers = kit_dir / K.HARNESS_HEADERS
    why = "the kit's harness program does not start here" if prebuilt.is_file() else "the kit has no harness program"
    if not (headers / "NvInferRuntime.h").is_file():
        return None, f"{why}, and no TensorRT headers to build one (prepare with --tensorrt-include PATH)"
    log(f"{why}: building it from {headers}")
    try:
        binary = H.build_harness(out_dir / "harness-build", headers)
    except DysinkError as exc:
        return None, f"{why}, and building it failed: {exc}"
    return binary, ""


def run_plugin_harness(kit_dir, out_dir, log: Callable[[str], None] = print) -> dict:
    """-> {"status": PASSED | FAILED | SKIPPED, "detail": str, "rows": [...]}: every case of the kit
    through the harness and the kit's libdysink_plugins.so of the case preset."""
    kit_dir, out_dir = Path(kit_dir), Path(out_dir)
    library = kit_dir / K.PLUGINS / CASE_MODEL / LIBRARY
    if not library.is_file():
        return {"status": SKIPPED, "rows": [],
                "detail": f"the kit has no {LIBRARY} (it is built at --prepare from TensorRT headers: "
                          "--tensorrt-include PATH)"}
    cases = sorted(p.parent for p in (kit_dir / K.HARNESS_CASES).glob("*/*/case.json"))
    if not cases:
        return {"status": SKIPPED, "rows": [], "detail": "the kit has no harness cases (no plugins/harness/ at "
                                                         "--prepare)"}
    binary, why = find_binary(kit_dir, out_dir, log)
    if binary is None:
        return {"status": SKIPPED, "rows": [], "detail": f"harness binary missing: {why}"}
    rows = []
    for case_dir in cases:
        precision, op = case_dir.parent.name, case_dir.name
        lines = H.run_harness(binary, library, case_dir, out_dir / "harness" / precision / op, log=log)
        for line in lines:
            status, _, text = line.partition(" ")
            rows.append({"precision": precision, "op": op, "result": status, "detail": text})
    statuses = {r["result"] for r in rows}
    if FAILED in statuses:
        bad = sum(r["result"] == FAILED for r in rows)
        return {"status": FAILED, "rows": rows, "detail": f"{bad} of {len(rows)} checks failed"}
    if statuses == {SKIPPED}:
        return {"status": SKIPPED, "rows": rows, "detail": f"the harness enqueued nothing: {rows[0]['detail']}"}
    passed = sum(r["result"] == PASSED for r in rows)
    return {"status": PASSED, "rows": rows,
            "detail": f"{passed} outputs of {len(cases)} cases match the references (library {library.relative_to(kit_dir)})"}


def arch_mismatch(kit: Path, sm: str | None) -> str | None:
    """Why the kit's cubins cannot run on this GPU (`sm` like "sm_90"), or None. The library's rule:
    the exact architecture, or on sm_8x an older minor."""
    if not sm:
        return None
    archs = K.load_manifest(kit).get("archs", [])
    cc = int(sm.removeprefix("sm_"))
    if cc in archs or (cc // 10 == 8 and any(a // 10 == 8 and a < cc for a in archs)):
        return None
    return (f"the kit's cubins are for {', '.join(f'sm_{a}' for a in archs)}, this GPU is {sm}: prepare the kit "
            f"with --arch {cc}")


def run(kit: Path, out: Path, log: Callable[[str], None], result: StageResult) -> None:
    mismatch = arch_mismatch(kit, device_info().get("sm"))
    if mismatch:
        result.finish(SKIPPED, mismatch)
        return
    got = run_plugin_harness(kit, out, log)
    result.rows = got["rows"]
    result.notes.append("Proves the plugin library's host logic and its enqueue of the embedded cubins on this GPU; "
                        "not TensorRT's parser, builder or plugin registry.")
    result.finish(got["status"], got["detail"])
