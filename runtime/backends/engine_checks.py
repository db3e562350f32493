"""Whether a bundle's TensorRT engines may run here: the manifest entry of each engine against this
TensorRT version, this GPU's compute capability, the engine file and the plugin library it was built
with. Used by the tensorrt backend before deserializing, and by `dysink-export build` (which records
the same fields).

No TensorRT here (the caller passes its version) and no torch; cuda-python is imported only inside
`compute_capability`, so the CPU tests import this module without it.
"""

from __future__ import annotations

from ...bundle import MANIFEST_NAME, Bundle, confined_file, sha256_file
from ...errors import DysinkError
from .plugin_library import bundle_plugin_library

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
    bundle_plugin_library(bundle, entry, rebuild)      # inside the bundle, unchanged (None: native engine)
    return entry


# TensorRT DataType names of the graph contract's dtype names.
TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32",
              "bool": "BOOL", "int8": "INT8", "float8e4m3fn": "FP8"}     # the last two: 8-bit K/V pools


def check_engine_io(trt, engine, spec, graph: str, rebuild: str) -> None:
    """The engine's I/O tensors against the bundle's contract for `graph` (names, direction, dtype,
    shape): one line naming the first mismatch, before any buffer is bound."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    want = {t.name: (t, True) for t in spec.inputs} | {t.name: (t, False) for t in spec.outputs}
    missing = [n for n in want if n not in names]
    extra = [n for n in names if n not in want]
    problem = None
    if missing or extra:
        problem = (f"tensors {', '.join(missing)} are missing" if missing else
                   f"it has tensors {', '.join(extra)} the contract does not")
    for name in names:
        if problem or name not in want:
            break
        t, is_input = want[name]
        mode = engine.get_tensor_mode(name)
        dtype = engine.get_tensor_dtype(name)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if (mode == trt.TensorIOMode.INPUT) != is_input:
            problem = f"{name} is an {'output' if is_input else 'input'}, the contract has an {'input' if is_input else 'output'}"
        elif dtype != getattr(trt.DataType, TRT_DTYPES[t.dtype]):
            problem = f"{name} is {dtype}, the contract has {t.dtype}"
        elif shape != tuple(t.shape):
            problem = f"{name} has shape {list(shape)}, the contract has {list(t.shape)}"
    if problem:
        raise DysinkError(f"engine {graph} does not match the bundle's contract: {problem}; rebuild it: {rebuild}")
