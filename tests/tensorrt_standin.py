"""Stand-ins for TensorRT's Python API and cuda-python's runtime module, just enough for
`dysink-export build` and the tensorrt backend: what they are called with is recorded, nothing runs
on a GPU (RecordingNetwork.evaluate computes a helper network in numpy, each layer as TensorRT's
headers document it: a model of TensorRT, not TensorRT). Names and signatures are those of the real
APIs (every name the sources use is checked against both bindings in tests/export/test_trt_build.py
and tests/runtime/backends/test_cuda_graphs.py)."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path


class FakeTensor:
    """An ITensor of a recorded network: TensorRT DataType name, shape, the layer that made it."""

    def __init__(self, dtype, shape, layer=None):
        self.dtype, self.shape, self.layer, self.name = dtype, tuple(int(d) for d in shape), layer, None


class FakeLayer:
    def __init__(self, kind, inputs, args, out):
        self.kind, self.inputs, self.args, self.outputs = kind, list(inputs), dict(args), [out]
        out.layer = self
        self._reshape = None

    def get_output(self, i):
        return self.outputs[i]

    @property
    def reshape_dims(self):
        return self._reshape

    @reshape_dims.setter
    def reshape_dims(self, dims):              # IShuffleLayer: the output takes the new shape
        assert self.kind == "shuffle" and _volume(dims) == _volume(self.inputs[0].shape), (dims, self.inputs[0].shape)
        self._reshape = tuple(dims)
        self.outputs[0].shape = tuple(dims)


def _volume(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


_FLOATS = ("FLOAT", "HALF", "BF16")
_COMPARE = ("greater", "less", "equal")


class RecordingNetwork:
    """INetworkDefinition for the helper engines: records every layer with its inputs and arguments and
    enforces the strongly typed rules the headers state (elementwise / select inputs of one rank and one
    type, select's condition BOOL, IQuantizeLayer: float input, a scalar constant scale of the input's
    type, INT8 / FP8 output). Unknown calls fail (AttributeError): every call must be one written here.
    `evaluate` runs the recorded network in numpy with the documented semantics of each layer."""

    def __init__(self, flags):
        self.flags, self.layers, self.inputs, self.outputs = flags, [], [], []
        self.parsed = None                     # set by OnnxParser.parse

    def _add(self, kind, inputs, dtype, shape, **args):
        layer = FakeLayer(kind, inputs, args, FakeTensor(dtype, shape))
        self.layers.append(layer)
        return layer

    @staticmethod
    def _broadcast(*tensors):
        ranks = {len(t.shape) for t in tensors}
        assert len(ranks) == 1, f"inputs of one rank (TensorRT does not broadcast ranks): {[t.shape for t in tensors]}"
        out = []
        for dims in zip(*(t.shape for t in tensors)):
            big = {d for d in dims if d != 1}
            assert len(big) <= 1, [t.shape for t in tensors]
            out.append(big.pop() if big else 1)
        return tuple(out)

    def add_input(self, name, dtype, shape):
        t = FakeTensor(dtype, shape)
        t.name = name
        self.inputs.append(t)
        return t

    def add_elementwise(self, input1, input2, op):
        assert input1.dtype == input2.dtype, f"strongly typed: elementwise of {input1.dtype} and {input2.dtype}"
        out = "BOOL" if op in _COMPARE else input1.dtype
        return self._add("elementwise", [input1, input2], out, self._broadcast(input1, input2), op=op)

    def add_unary(self, input, op):
        return self._add("unary", [input], input.dtype, input.shape, op=op)

    def add_reduce(self, input, op, axes, keep_dims):
        shape = [1 if axes >> i & 1 else d for i, d in enumerate(input.shape)]
        shape = shape if keep_dims else [d for i, d in enumerate(shape) if not axes >> i & 1]
        return self._add("reduce", [input], input.dtype, shape, op=op, axes=axes, keep_dims=keep_dims)

    def add_select(self, condition, then_input, else_input):
        assert condition.dtype == "BOOL" and then_input.dtype == else_input.dtype
        return self._add("select", [condition, then_input, else_input], then_input.dtype,
                         self._broadcast(condition, then_input, else_input))

    def add_constant(self, shape, weights):
        import numpy as np

        assert isinstance(weights, np.ndarray) and weights.size == _volume(shape) and weights.dtype == np.float32
        return self._add("constant", [], "FLOAT", shape, value=weights.copy())

    def add_cast(self, input, to_type):
        return self._add("cast", [input], to_type, input.shape, to=to_type)

    def add_quantize(self, input, scale, output_type):
        assert input.dtype in _FLOATS and scale.dtype == input.dtype, (input.dtype, scale.dtype)
        assert scale.shape == () and scale.layer is not None and scale.layer.kind == "constant", \
            "activations quantise per tensor only, by a scalar build-time constant"
        assert output_type in ("INT8", "FP8"), output_type
        return self._add("quantize", [input, scale], output_type, input.shape, to=output_type)

    def add_shuffle(self, input):
        return self._add("shuffle", [input], input.dtype, input.shape)

    def mark_output(self, tensor):
        assert tensor.name, "an output tensor is named before it is marked"
        self.outputs.append(tensor)

    def output(self, name):
        return next(t for t in self.outputs if t.name == name)

    def evaluate(self, feeds):
        """numpy run of the network: {input name: array} -> {output name: array}. IQuantizeLayer as its
        header documents it: round to nearest, ties to even, clamped to [-128, 127] (INT8) / [-448, 448]
        (FP8, then e4m3 by ml_dtypes' round-to-nearest cast)."""
        import ml_dtypes
        import numpy as np

        values = {id(t): np.asarray(feeds[t.name], np.float32) for t in self.inputs}
        ops = {"prod": np.multiply, "sum": np.add, "div": np.divide, "min": np.minimum, "max": np.maximum,
               "greater": np.greater}
        for layer in self.layers:
            x = [values[id(t)] for t in layer.inputs]
            if layer.kind == "constant":
                y = layer.args["value"].reshape(layer.outputs[0].shape)
            elif layer.kind == "elementwise":
                y = ops[layer.args["op"]](x[0], x[1])
            elif layer.kind == "unary":
                y = {"abs": np.abs}[layer.args["op"]](x[0])
            elif layer.kind == "reduce":
                axes = tuple(i for i in range(x[0].ndim) if layer.args["axes"] >> i & 1)
                y = {"max": np.max}[layer.args["op"]](x[0], axis=axes, keepdims=layer.args["keep_dims"])
            elif layer.kind == "select":
                y = np.where(x[0], x[1], x[2])
            elif layer.kind == "cast":
                y = x[0].astype({"FLOAT": np.float32, "HALF": np.float16, "BF16": ml_dtypes.bfloat16}[layer.args["to"]])
            elif layer.kind == "quantize":
                r = x[0] / x[1]
                y = (np.clip(np.rint(r), -128, 127).astype(np.int8) if layer.args["to"] == "INT8"
                     else np.clip(r, -448, 448).astype(ml_dtypes.float8_e4m3fn))
            else:
                y = x[0].reshape(layer.outputs[0].shape)
            values[id(layer.outputs[0])] = y
        return {t.name: values[id(t)] for t in self.outputs}


class FakeEngine:
    """An engine whose I/O tensors are the contract's (or `overrides` of it): name -> (is_input, dtype, shape)."""

    def __init__(self, trt, tensors: dict[str, tuple[bool, str, tuple]], graph=None):
        self.trt, self.tensors, self.graph = trt, tensors, graph
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
        return FakeContext(self.graph, self.trt)


class FakeContext:
    """An execution context; when its FakeTensorRT's `log` is a list (shared with FakeCudaRuntime's),
    each enqueue appends ("execute", what, {tensor: address}), in order with the runtime's calls."""

    def __init__(self, what=None, owner=None):
        self.addresses, self.what, self.owner = {}, what, owner

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        if self.owner is not None and self.owner.log is not None:
            self.owner.log.append(("execute", self.what, dict(self.addresses)))
        return True


TRT_DTYPES = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int64": "INT64", "int32": "INT32",
              "bool": "BOOL", "int8": "INT8", "float8e4m3fn": "FP8"}


class FakeTensorRT:
    """`import tensorrt as trt` for the tests. `specs`: graph name -> GraphSpec (the engines'
    I/O); `io_overrides`: graph -> {tensor: (is_input, DataType name, shape)} to make an engine
    that disagrees with the contract."""

    __version__ = "10.3.0"

    def __init__(self, specs=None, io_overrides=None):
        self.parsed: list[tuple[bytes, str]] = []
        self.networks: list[RecordingNetwork] = []       # every network made, helper engines' included
        self.helpers: dict[int, FakeContext] = {}        # id(helper network) -> its execution context
        self.log = None                                  # a list: contexts append their enqueues
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

        class Builder:
            def __init__(self, logger):
                pass

            def get_plugin_registry(self):
                return fake._registry

            def create_network(self, flags):
                fake.networks.append(RecordingNetwork(flags))
                return fake.networks[-1]

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                if network.parsed is None:           # a helper engine built from layers
                    assert network.outputs, "a helper network marks its outputs"
                    return f"helper:{fake.networks.index(network)}".encode()
                return f"engine:{network.parsed}".encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse(self, model, path=None):
                fake.parsed.append((bytes(model), path))
                self.network.parsed = path
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
                if text.startswith("helper:"):        # the runtime's helper engines
                    network = fake.networks[int(text.removeprefix("helper:"))]

                    def context():
                        fake.helpers[id(network)] = FakeContext(network, fake)
                        return fake.helpers[id(network)]
                    return types.SimpleNamespace(create_execution_context=context)
                graph = Path(text.removeprefix("engine:")).stem
                if graph not in fake.specs:
                    return types.SimpleNamespace(create_execution_context=lambda: FakeContext(graph, fake))
                spec = fake.specs[graph]
                tensors = {t.name: (True, TRT_DTYPES[t.dtype], tuple(t.shape)) for t in spec.inputs}
                tensors |= {t.name: (False, TRT_DTYPES[t.dtype], tuple(t.shape)) for t in spec.outputs}
                tensors.update(fake.io_overrides.get(graph, {}))
                return FakeEngine(fake, tensors, graph)

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
        self.DataType = types.SimpleNamespace(**{v: v for v in TRT_DTYPES.values()})
        self.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="ampere+")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.ElementWiseOperation = types.SimpleNamespace(PROD="prod", SUM="sum", DIV="div", MIN="min", MAX="max",
                                                          GREATER="greater")
        self.UnaryOperation = types.SimpleNamespace(ABS="abs")
        self.ReduceOperation = types.SimpleNamespace(MAX="max")

    def network_with_output(self, name):
        """The (last) helper network that marks an output called `name`, and its execution context."""
        net = [n for n in self.networks if n.parsed is None and any(t.name == name for t in n.outputs)][-1]
        return net, self.helpers.get(id(net))


class FakeCudaRuntime:
    """cuda-python's runtime module (`cuda.bindings.runtime`): every call succeeds and is counted;
    device pointers are made-up integers, pinned host buffers are real memory (the backend
    copies into them)."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.log = None                      # a list: (name, args) of every call, when a test wants them
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
            if self.log is not None:
                self.log.append((name, args))
            if name == "cudaMalloc":
                self._next += max(int(args[0]), 1) + 256
                return (0, self._next)
            if name == "cudaMallocHost":
                buf = ctypes.create_string_buffer(max(int(args[0]), 1))
                self._host[ctypes.addressof(buf)] = buf
                return (0, ctypes.addressof(buf))
            if name == "cudaStreamCreate":         # cudaStream_t converts with int(), as the backend enqueues
                return (0, 77)
            if name == "cudaEventCreateWithFlags":
                return (0, f"{name}-handle")
            if name == "cudaGetErrorString":
                return (0, "error")
            return (0,)

        return call
