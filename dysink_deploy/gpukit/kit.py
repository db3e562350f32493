"""The kit's layout and its manifest, kit.json (torch-free: `--kit` reads it before any stage runs).

    KIT/kit.json                      what is in it, versions, architectures, date, every file's sha256
    KIT/kernels/<model>/              AOT cubins + kernels.json (`dysink-export kernels`), per preset
    KIT/plugins/<model>/              libdysink_plugins.so + _autoreg (`dysink-export plugins`), when
                                      TensorRT headers were given at --prepare
    KIT/harness/cases/<precision>/<op>/   the plugin harness's cases (plugins/harness.py write_cases,
                                      tiny preset): inputs and the references' outputs, computed here
    KIT/harness/bin/dysink_plugin_harness, KIT/harness/tensorrt-include/   the harness program and
                                      the headers it was built with (to rebuild it there if it does
                                      not run), when TensorRT headers were given
    KIT/reference/tiny-stream.json    a 12-block tiny torch stream on the CPU: records and decisions
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .. import __version__
from ..errors import DysinkError
from ..jsonfile import read_json_object

KIT_FORMAT = 1
MANIFEST = "kit.json"
KERNELS = "kernels"
PLUGINS = "plugins"
HARNESS = "harness"
REFERENCE = "reference"
STREAM_REFERENCE = f"{REFERENCE}/tiny-stream.json"
HARNESS_CASES = f"{HARNESS}/cases"
HARNESS_BIN = f"{HARNESS}/bin"
HARNESS_HEADERS = f"{HARNESS}/tensorrt-include"
SIZE_LIMIT = 64 << 20          # what travels to a lent machine with the working tree
# The source folders of the package (pyproject's package-dir): their hash ties a kit to its checkout.
SOURCE_FOLDERS = ("dysink_deploy", "export", "runtime", "plugins")
ROOT = Path(__file__).resolve().parents[2]    # the checkout (gpukit/ -> dysink_deploy/ -> root)


def versions() -> dict:
    """Python and the libraries that matter, as installed here (None where missing); no import of torch
    unless it is already imported (reads the distributions' metadata instead)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "dysink_deploy": __version__}
    for name in ("torch", "triton", "numpy", "onnx", "onnxruntime", "cuda-python", "cuda-bindings"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the package's Python sources (path + content), in sorted order."""
    h = hashlib.sha256()
    for folder in SOURCE_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def git_commit(root: Path = ROOT) -> dict:
    """{"commit": hash or None, "dirty": bool or None} of the checkout (read-only git calls)."""
    def git(*args):
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def file_entries(kit: Path) -> list[dict]:
    out = []
    for path in sorted(p for p in kit.rglob("*") if p.is_file() and p.name != MANIFEST):
        data = path.read_bytes()
        out.append({"path": path.relative_to(kit).as_posix(), "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest()})
    return out


def kit_size(kit: Path) -> int:
    return sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())


def write_manifest(kit: Path, contents: dict, archs: list[int]) -> dict:
    files = file_entries(kit)
    manifest = {
        "kit_format": KIT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prepared_on": {"host": platform.node(), "machine": platform.machine(), "python": sys.executable},
        "archs": list(archs),
        "versions": versions(),
        "source": {**git_commit(), "sha256": source_digest()},
        "contents": contents,
        "files": files,
        "size_bytes": sum(f["bytes"] for f in files),
    }
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(kit: str | os.PathLike) -> dict:
    """kit.json of `kit`, checked: the format, and that every listed file is there with its size."""
    kit = Path(kit)
    path = kit / MANIFEST
    if not path.is_file():
        raise DysinkError(f"{kit} is not a GPU kit (no {MANIFEST}); make one with scripts/gpu-check.sh --prepare "
                          f"{kit}")
    manifest = read_json_object(str(path), "kit manifest", 4 << 20, "GPU kit manifest")
    if manifest.get("kit_format") != KIT_FORMAT:
        raise DysinkError(f"{path} has kit format {manifest.get('kit_format')!r}, this checkout reads {KIT_FORMAT}; "
                          "prepare the kit again with this checkout")
    missing = [f["path"] for f in manifest.get("files", [])
               if not (kit / f["path"]).is_file() or (kit / f["path"]).stat().st_size != f["bytes"]]
    if missing:
        raise DysinkError(f"kit {kit} is incomplete: {len(missing)} file(s) missing or changed, e.g. {missing[0]}; "
                          "prepare it again")
    return manifest


def source_matches(manifest: dict) -> bool:
    """Whether this checkout's Python sources are the ones the kit was prepared from."""
    return manifest.get("source", {}).get("sha256") == source_digest()
