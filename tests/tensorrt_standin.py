"""Stand-ins for TensorRT's Python API and cuda-python's runtime module, just enough for
`dysink-export build` and the tensorrt backend's construction: what they are called with is
recorded, nothing is computed. Names and signatures are those of the real APIs (every name the
sources use is checked against both bindings in tests/export/test_trt_build.py and
tests/runtime/backends/test_cuda_graphs.py)."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path


class _Anything:
    """A permissive object for the network-building calls of the helper engines."""

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __setattr__(self, name, value):
        pass


class FakeEngine:
    """An engine whose I/O tensors are the contract's (or `overrides` of it): name -> (is_input, dtype, shape)."""

    def __init__(self, trt, tensors: dict[str, tuple[bool, str, tuple]]):
        self.trt, self.tensors = trt, tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if self.tensors[name][0] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return getattr(self.trt.DataType, self.tensors[name][1])

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def create_execution_context(self):
        return FakeContext()


class FakeContext:
    def __init__(self):
        self.addresses = {}

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        return True


TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32",
              "bool": "BOOL"}


class FakeTensorRT:
    """`import tensorrt as trt` for the tests. `specs`: graph name -> GraphSpec (the engines'
    I/O); `io_overrides`: graph -> {tensor: (is_input, DataType name, shape)} to make an engine
    that disagrees with the contract."""

    __version__ = "10.3.0"

    def __init__(self, specs=None, io_overrides=None):
        self.parsed: list[tuple[bytes, str]] = []
        self.loaded_libraries: list[str] = []
        self.hardware_compat_levels: list[object] = []
        self.specs, self.io_overrides = specs or {}, io_overrides or {}
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class Registry:
            def load_library(self, path):
                fake.loaded_libraries.append(str(path))
                return object()

        self._registry = Registry()

        class Cache:
            def serialize(self):
                return b"cache"

        class Config:
            def create_timing_cache(self, data):
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return Cache()

            def __setattr__(self, name, value):
                if name == "hardware_compatibility_level":
                    fake.hardware_compat_levels.append(value)
                object.__setattr__(self, name, value)

        class Network(_Anything):
            pass

        class Builder:
            def __init__(self, logger):
                pass

            def get_plugin_registry(self):
                return fake._registry

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return f"engine:{fake.parsed[-1][1] if fake.parsed else 'helper'}".encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, model, path=None):
                fake.parsed.append((bytes(model), path))
                return True

            def parse_from_file(self, path):
                raise AssertionError("parse_from_file imports the custom nodes as their local functions")

        class Runtime:
            def __init__(self, logger):
                pass

            def get_plugin_registry(self):
                return fake._registry

            def deserialize_cuda_engine(self, blob):
                text = bytes(blob).decode(errors="replace")
                graph = Path(text.removeprefix("engine:")).stem if text.startswith("engine:") else None
                if graph not in fake.specs:           # the runtime's helper engines
                    return types.SimpleNamespace(create_execution_context=lambda: FakeContext())
                spec = fake.specs[graph]
                tensors = {t.name: (True, TRT_DTYPES[t.dtype], tuple(t.shape)) for t in spec.inputs}
                tensors |= {t.name: (False, TRT_DTYPES[t.dtype], tuple(t.shape)) for t in spec.outputs}
                tensors.update(fake.io_overrides.get(graph, {}))
                return FakeEngine(fake, tensors)

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.DataType = types.SimpleNamespace(**{v: v for v in TRT_DTYPES.values()})
        self.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="ampere+")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.ElementWiseOperation = types.SimpleNamespace(PROD="prod", SUM="sum")


class FakeCudaRuntime:
    """cuda-python's runtime module (`cuda.bindings.runtime`): every call succeeds and is counted;
    device pointers are made-up integers, pinned host buffers are real memory (the backend
    copies into them)."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self._next = 1 << 20
        self._host: dict[int, ctypes.Array] = {}
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2,
                                                    cudaMemcpyDeviceToDevice=3)
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)
        self.cudaEventDisableTiming = 2

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def __getattr__(self, name):
        if not name.startswith("cuda"):
            raise AttributeError(name)

        def call(*args):
            self._count(name)
            if name == "cudaMalloc":
                self._next += max(int(args[0]), 1) + 256
                return (0, self._next)
            if name == "cudaMallocHost":
                buf = ctypes.create_string_buffer(max(int(args[0]), 1))
                self._host[ctypes.addressof(buf)] = buf
                return (0, ctypes.addressof(buf))
            if name in ("cudaStreamCreate", "cudaEventCreateWithFlags"):
                return (0, f"{name}-handle")
            if name == "cudaGetErrorString":
                return (0, "error")
            return (0,)

        return call
