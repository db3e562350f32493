"""The tensorrt backend's helper engines: renoise, the latent -> z cast and (8-bit K/V pages) the page
quantiser, built from TensorRT network layers when the backend starts (no ONNX needed). `trt` comes in
from the backend. Written to the TensorRT 10.3 .. 11.x Python API; **never built or run on TensorRT or
a GPU** (neither exists on the development machines): the layer choices below are read from the 10.3 /
11.1 headers, the operator docs and pyGraph.cpp's bindings, and checked only against a stand-in
(tests/tensorrt_standin.py) that records the network."""

from __future__ import annotations

import numpy as np

from ...errors import DysinkError
from ...graphs import QUANTISED_KV_DTYPES
from .cuda import _Cuda

QMAX = {"int8": 127.0, "fp8": 448.0}           # ops/kv_pages.QMAX (runtime/ has no torch)


def page_type_refusal(bundle, cc: str | None = None) -> str | None:
    """The one line that says why the tensorrt path cannot take this bundle's K/V pages, or None.
    bf16 pages under an fp32 / fp16 model: the exporter writes a plain GatedSinkAttention node with bf16
    pools, which that plugin refuses (its pools are in q's dtype). fp8 pages need sm_89+ (the plugin's
    fp8 kernels and e4m3 conversions); `cc` is checked when given."""
    kind, where = bundle.kv_cache_dtype, f"bundle {bundle.path} stores {bundle.kv_cache_dtype} K/V pages"
    if kind == "bf16" and bundle.precision != "bf16":
        return (f"{where} under an {bundle.precision} model: its dit_step holds a plain GatedSinkAttention node "
                "with bf16 pools, which the TensorRT plugin refuses (pools in the model dtype only); for TensorRT "
                "export with --kv-cache-dtype auto or int8, or run this bundle with --backend onnxruntime or torch")
    if kind == "fp8" and cc and cc[3:].isdigit() and int(cc[3:]) < 89:
        return f"{where}, which need sm_89 or newer; this GPU is {cc}: export with --kv-cache-dtype int8"
    return None


class _Ops:
    """renoise ((1 - sigma) x0 + sigma eps, float32), latent -> z ([1, C, F, h, w] in the model dtype) and,
    for int8 / fp8 pages, `quantise` ([layers, L, H, D] in the model dtype -> q int8 | e4m3 and float32
    scales [layers, L, H]): tiny engines built from TensorRT layers at start (strongly typed networks)."""

    def __init__(self, trt, logger, runtime, model_dtype: str, latent_shape, launch,
                 pages: str = "auto", kv_shape=None):
        self.trt, self._launch = trt, launch
        self.shape = tuple(latent_shape)
        builder = trt.Builder(logger)
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        ones = (1,) * len(self.shape)
        dtype = {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF, "bfloat16": trt.DataType.BF16}

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
        cast = net.add_cast(x, dtype[model_dtype]).get_output(0)
        shuffle = net.add_shuffle(cast)
        shuffle.reshape_dims = (1,) + self.shape
        z = shuffle.get_output(0)
        z.name = "z"
        net.mark_output(z)
        self._cast = self._engine(builder, net, runtime)
        self._scalars: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self._quantise = None
        if pages in QUANTISED_KV_DTYPES:
            net = builder.create_network(flag)
            self._weights = self._quantise_network(net, dtype[model_dtype], tuple(kv_shape), pages)
            self._quantise = self._engine(builder, net, runtime)

    def _quantise_network(self, net, model_type, shape, pages: str) -> list[np.ndarray]:
        """ops/kv_pages.quantise_page as TensorRT layers, per (token, head) row over D:
        scale = max|x| / QMAX (1 where the row is all zero), y = clamp(x / scale, -QMAX, QMAX), q = y
        rounded to int8 / e4m3. The rounding is IQuantizeLayer's with a constant scale of 1 (documented in
        both headers: round to nearest, ties to even; clamp to [-128, 127] / [-448, 448], which the clamp
        before it makes a no-op): ICastLayer has no FP8 (operator docs, 10.6 and latest), and one layer for
        both types keeps int8 and fp8 alike. Activations may only be quantised per tensor, hence the
        division before it. All arithmetic in float32 as the reference's; whether TensorRT's float32
        division is correctly rounded (the reference's is), or a division by the constant QMAX becomes a
        product by its reciprocal, is not known here: a scale may then differ by an ulp, and an element
        that lands within an ulp of a rounding step may round the other way. Returns the constants' arrays (kept alive until the
        engine is built)."""
        trt = self.trt
        op, f32 = trt.ElementWiseOperation, trt.DataType.FLOAT
        keep: list[np.ndarray] = []

        def const(value, shape=(1, 1, 1, 1)):
            arr = np.full(shape, value, np.float32)
            keep.append(arr)
            return net.add_constant(shape, arr).get_output(0)

        x = net.add_input("x", model_type, shape)
        xf = x if model_type == f32 else net.add_cast(x, f32).get_output(0)
        absx = net.add_unary(xf, trt.UnaryOperation.ABS).get_output(0)
        amax = net.add_reduce(absx, trt.ReduceOperation.MAX, 1 << 3, True).get_output(0)     # [l, L, H, 1]
        qmax = const(QMAX[pages])
        nonzero = net.add_elementwise(amax, const(0.0), op.GREATER).get_output(0)           # BOOL
        ratio = net.add_elementwise(amax, qmax, op.DIV).get_output(0)
        scale = net.add_select(nonzero, ratio, const(1.0)).get_output(0)
        y = net.add_elementwise(xf, scale, op.DIV).get_output(0)
        y = net.add_elementwise(y, qmax, op.MIN).get_output(0)
        y = net.add_elementwise(y, const(-QMAX[pages]), op.MAX).get_output(0)
        to = trt.DataType.INT8 if pages == "int8" else trt.DataType.FP8
        q = net.add_quantize(y, const(1.0, ()), to).get_output(0)     # per-tensor: a scalar build-time constant
        q.name = "q"
        net.mark_output(q)
        flat = net.add_shuffle(scale)
        flat.reshape_dims = shape[:3]
        s = flat.get_output(0)
        s.name = "scale"
        net.mark_output(s)
        return keep

    def _engine(self, builder, net, runtime):
        config = builder.create_builder_config()
        blob = builder.build_serialized_network(net, config)
        if blob is None:
            raise DysinkError("TensorRT could not build the runtime's elementwise helper engines (see its messages "
                              "above)")
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

    def quantise(self, x: int, q: int, scale: int) -> None:
        """Enqueue the page quantiser on the backend's stream: x [layers, L, H, D] -> q, scale (device addresses)."""
        engine, ctx = self._quantise
        bound = {"x": x, "q": q, "scale": scale}
        for name, ptr in bound.items():
            ctx.set_tensor_address(name, ptr)
        self._launch("page quantise", ctx, bound)
