"""Build libdysink_plugins.so (+ libdysink_plugins_autoreg.so): kernels -> embedded source -> CMake. The API
behind `dysink-export plugins`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from ..errors import DysinkError
from .aot import KERNEL_DIR_OWNED
from .embed import embedded_source

CPP_DIR = Path(__file__).parent / "cpp"
LIBRARY = "libdysink_plugins.so"                 # for loadLibrary / trtexec --dynamicPlugins: touches no registry
AUTOREG_LIBRARY = "libdysink_plugins_autoreg.so"  # for ctypes.CDLL / polygraphy --plugins: registers when loaded
_USUAL_INCLUDES = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/local/tensorrt/include",
                   "/opt/tensorrt/include", "/usr/include")
HEADERS_HINT = ("set TensorRT_INCLUDE_DIR (or --tensorrt-include) to the folder holding NvInferRuntime.h: JetPack "
                "ships it in /usr/include/aarch64-linux-gnu; on a desktop, the include/ of the TensorRT tarball or "
                "of the public NVIDIA/TensorRT repository at your version's tag")


def find_tensorrt_include(explicit: str | None = None) -> Path | None:
    """The TensorRT include folder: the argument, $TensorRT_INCLUDE_DIR, $TensorRT_ROOT/include, usual paths."""
    candidates = [explicit, os.environ.get("TensorRT_INCLUDE_DIR")]
    if os.environ.get("TensorRT_ROOT"):
        candidates.append(os.path.join(os.environ["TensorRT_ROOT"], "include"))
    if explicit or candidates[1] or len(candidates) > 2:
        found = [Path(c) for c in candidates if c and (Path(c) / "NvInferRuntime.h").is_file()]
        if not found:
            named = explicit or candidates[1] or candidates[2]
            raise DysinkError(f"no NvInferRuntime.h in {named}; {HEADERS_HINT}")
        return found[0]
    for path in _USUAL_INCLUDES:
        if (Path(path) / "NvInferRuntime.h").is_file():
            return Path(path)
    return None


def tensorrt_header_version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        for line in text.splitlines():
            tokens = line.split()
            if len(tokens) >= 3 and tokens[0] == "#define" and tokens[1] in (f"NV_TENSORRT_{name}", f"TRT_{name}_ENTERPRISE"):
                parts.append(tokens[2])
                break
    return ".".join(parts) or "unknown"


def tensorrt_target(include: Path) -> str:
    """Which TensorRT a library built against `include` runs with (it refuses another major at load time)."""
    version = tensorrt_header_version(include)
    major = version.split(".")[0]
    return f"targets TensorRT {major} (headers {version}); load it only with a TensorRT {major}.x runtime"


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if "error" in ln.lower()] or \
            (res.stderr + res.stdout).strip().splitlines()[-1:]
        raise DysinkError(f"{what} failed: {lines[0].strip() if lines else 'no output'} (command: {' '.join(cmd[:3])} ...)")


def build_library(kernel_dir: Path, build_dir: Path, include: Path,
                  log: Callable[[str], None] = lambda m: None) -> Path:
    """Generate the embedded-kernel source and build with CMake; returns the built library path
    (AUTOREG_LIBRARY is built beside it).

    `build_dir` may hold an earlier build, also against other TensorRT headers: `include` is the one used."""
    if not shutil.which("cmake"):
        raise DysinkError("cmake is not installed; install cmake >= 3.18 and a C++17 compiler")
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "kernels_embedded.cpp"
    tmp = source.with_suffix(".cpp.partial")
    tmp.write_text(embedded_source(kernel_dir))
    tmp.replace(source)
    cmd = ["cmake", "-S", str(CPP_DIR), "-B", str(build_dir), f"-DTensorRT_INCLUDE_DIR={include}",
           f"-DDYSINK_KERNELS_SOURCE={source}"]
    log(f"cmake configure against TensorRT {tensorrt_header_version(include)} headers in {include}")
    _run(cmd, "cmake configure")
    log("cmake build")
    _run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)], "cmake build")
    return build_dir / LIBRARY


def plugin_dir_files(root: Path) -> set[str]:
    """The files `dysink-export plugins` wrote in `root` (for --overwrite): the two libraries and the
    kernels/ folder its kernels.json describes."""
    names = {LIBRARY, AUTOREG_LIBRARY}
    kernels = root / "kernels"
    if kernels.is_dir() and not kernels.is_symlink():
        names |= {f"kernels/{n}" for n in KERNEL_DIR_OWNED(kernels)}
    return names
