"""Whether a bundle's TensorRT engines may run here: the manifest entry of each engine against this
TensorRT version, this GPU's compute capability, the engine file and the plugin library it was built
with. Used by the tensorrt backend before deserializing, and by `dysink-export build` (which records
the same fields).

No TensorRT here (the caller passes its version) and no torch; cuda-python is imported only inside
`compute_capability`, so the CPU tests import this module without it.
"""

from __future__ import annotations

from pathlib import Path

from ...bundle import MANIFEST_NAME, Bundle, confined_file, sha256_file
from ...errors import DysinkError

NO_TENSORRT = ("TensorRT's Python package is not installed: on a Jetson it comes with JetPack "
               "(sudo apt install python3-libnvinfer); on a desktop: pip install tensorrt "
               "--extra-index-url https://pypi.nvidia.com")


def compute_capability() -> str:
    """'sm_87' for the current CUDA device, through cuda-python (no torch)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DysinkError("cuda-python is not installed: pip install cuda-python") from None
    err, device = cudart.cudaGetDevice()
    if int(err) != 0:
        raise DysinkError(f"no CUDA device (cudaGetDevice: {err}); engines are built on the GPU that runs them")
    err, major = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
    err, minor = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
    return f"sm_{major}{minor}"


def check_engine_entry(bundle: Bundle, graph: str, trt_version: str, cc: str) -> dict:
    """The manifest entry of an engine, refused (one line, with the rebuild command) when it was built by
    another TensorRT version or for another GPU, or when its file changed."""
    engines = bundle.manifest.get("engines", {})
    rebuild = f"dysink-export build --bundle {bundle.path} --graph {graph}"
    if graph not in engines:
        raise DysinkError(f"bundle {bundle.path} has no engine for {graph}; build it: {rebuild}")
    entry = engines[graph]
    if entry.get("tensorrt_version") != trt_version:
        raise DysinkError(f"engine {entry['file']} was built by TensorRT {entry.get('tensorrt_version')}, this is "
                          f"TensorRT {trt_version}; engines are version-specific: {rebuild}")
    if entry.get("compute_capability") != cc:
        raise DysinkError(f"engine {entry['file']} was built for {entry.get('compute_capability')}, this GPU is {cc}; "
                          f"build engines on the GPU that runs them: {rebuild}")
    path = confined_file(bundle.path, entry.get("file"), f"engine of {graph}", rebuild)
    if path is None or sha256_file(path) != entry.get("sha256"):
        raise DysinkError(f"engine {entry.get('file')} is missing or does not match its sha256 in {MANIFEST_NAME}: "
                          f"{rebuild}")
    lib = Path(entry.get("plugin_library", {}).get("file", ""))
    if not lib.is_file() or sha256_file(lib) != entry["plugin_library"].get("sha256"):
        raise DysinkError(f"the plugin library the engine {entry['file']} was built with ({lib}) is missing or "
                          f"changed; rebuild the engines with the library you have: {rebuild}")
    return entry
