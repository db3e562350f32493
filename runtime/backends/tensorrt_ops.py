"""The tensorrt backend's helper engines: renoise and the latent -> z cast, built from TensorRT
network layers when the backend starts (no ONNX needed). `trt` comes in from the backend."""

from __future__ import annotations

import numpy as np

from ...errors import DysinkError
from .cuda import _Cuda


class _Ops:
    """renoise ((1 - sigma) x0 + sigma eps, float32) and latent -> z ([1, C, F, h, w] in the model dtype)
    as two tiny engines built from TensorRT layers at start (no ONNX needed)."""

    def __init__(self, trt, logger, runtime, model_dtype: str, latent_shape, launch):
        self.trt, self._launch = trt, launch
        self.shape = tuple(latent_shape)
        builder = trt.Builder(logger)
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        ones = (1,) * len(self.shape)

        net = builder.create_network(flag)
        x0 = net.add_input("x0", trt.DataType.FLOAT, self.shape)
        eps = net.add_input("eps", trt.DataType.FLOAT, self.shape)
        a = net.add_input("a", trt.DataType.FLOAT, ones)
        b = net.add_input("b", trt.DataType.FLOAT, ones)
        p = net.add_elementwise(x0, a, trt.ElementWiseOperation.PROD).get_output(0)
        q = net.add_elementwise(eps, b, trt.ElementWiseOperation.PROD).get_output(0)
        y = net.add_elementwise(p, q, trt.ElementWiseOperation.SUM).get_output(0)
        y.name = "y"
        net.mark_output(y)
        self._renoise = self._engine(builder, net, runtime)

        net = builder.create_network(flag)
        x = net.add_input("x", trt.DataType.FLOAT, self.shape)
        dtype = {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF, "bfloat16": trt.DataType.BF16}
        cast = net.add_cast(x, dtype[model_dtype]).get_output(0)
        shuffle = net.add_shuffle(cast)
        shuffle.reshape_dims = (1,) + self.shape
        z = shuffle.get_output(0)
        z.name = "z"
        net.mark_output(z)
        self._cast = self._engine(builder, net, runtime)
        self._scalars: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def _engine(self, builder, net, runtime):
        config = builder.create_builder_config()
        blob = builder.build_serialized_network(net, config)
        if blob is None:
            raise DysinkError("TensorRT could not build the runtime's elementwise helper engines")
        engine = runtime.deserialize_cuda_engine(blob)
        return engine, engine.create_execution_context()

    def renoise(self, cuda: _Cuda, x0: int, eps: int, out: int, sigma: float) -> None:
        engine, ctx = self._renoise
        if sigma not in self._scalars:
            ones = (1,) * len(self.shape)
            a = np.full(ones, 1.0 - sigma, np.float32)
            b = np.full(ones, sigma, np.float32)
            pa, pb = cuda.alloc(4, zero=False), cuda.alloc(4, zero=False)
            cuda.upload(pa, a)
            cuda.upload(pb, b)
            self._scalars[sigma] = (pa, pb, a, b)
        pa, pb, _, _ = self._scalars[sigma]
        bound = {"x0": x0, "eps": eps, "a": pa, "b": pb, "y": out}
        for name, ptr in bound.items():
            ctx.set_tensor_address(name, ptr)
        self._launch("renoise", ctx, bound)

    def to_model(self, cuda: _Cuda, latent: int, z: int) -> None:
        engine, ctx = self._cast
        ctx.set_tensor_address("x", latent)
        ctx.set_tensor_address("z", z)
        self._launch("latent cast", ctx, {"x": latent, "z": z})
