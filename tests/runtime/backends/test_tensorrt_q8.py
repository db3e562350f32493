"""The tensorrt backend on 8-bit K/V pages (`--kv-cache-dtype int8 | fp8`), with the TensorRT and
cuda-python stand-ins (tests/tensorrt_standin.py): the quantise helper engine's network (layers,
dtypes, and its numpy evaluation against runtime/pages.np_quantise_page), the copies write_page
enqueues for pools and scales, the scales an unwritten page starts with, the host bank's entries,
and the refusals. **Nothing here runs on TensorRT or a GPU**: the stand-in records calls and models
each layer as TensorRT's headers document it.

The bundles are the fp32 tiny bundle with its manifest rewritten to the page type's contract (the
ONNX files are not re-exported: no engine is run here, and the stand-ins take the contract from the
manifest). tests/runtime/test_kv_cache_dtype.py builds from a really exported int8 bundle."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.export import trt_build as tb  # noqa: E402
from dysink_deploy.graphs import graph_specs  # noqa: E402
from dysink_deploy.runtime.backends import cuda as cuda_mod  # noqa: E402
from dysink_deploy.runtime.backends import plugin_library  # noqa: E402
from dysink_deploy.runtime.backends import tensorrt_backend as trb  # noqa: E402
from dysink_deploy.runtime.backends.tensorrt_ops import _Ops  # noqa: E402
from dysink_deploy.runtime.pages import np_dequantise_pages, np_quantise_page  # noqa: E402
from tests.conftest import edit_manifest  # noqa: E402
from tests.tensorrt_standin import FakeCudaRuntime, FakeTensorRT  # noqa: E402

D2D, D2H = 3, 2          # FakeCudaRuntime's cudaMemcpyKind values


def _with_pages(path, kind):
    b = Bundle.load(path)
    spec = graph_specs(b.model, b.stream, b.precision, b.encoder_frames, b.interactive, b.text_encoder is not None,
                       kv_cache_dtype=kind, bank_placement=b.bank_placement)["dit_step"]

    def fn(m):
        m["kv_cache_dtype"] = kind
        m["graphs"]["dit_step"]["inputs"] = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
                                             for t in spec.inputs]
    edit_manifest(path, fn)
    return Bundle.load(path)


@pytest.fixture
def q8(monkeypatch, bundle_copy, tmp_path):
    """kind, cc -> (backend, fake tensorrt, fake cuda runtime) on a built bundle with `kind` pages."""
    def make(kind="int8", cc="sm_87"):
        bundle = _with_pages(bundle_copy, kind)
        trt, rt = FakeTensorRT(specs=bundle.specs), FakeCudaRuntime()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tb, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(tb, "compute_capability", lambda: cc)
        monkeypatch.setattr(trb, "compute_capability", lambda: cc)
        monkeypatch.setattr(cuda_mod, "_cudart", lambda: rt)
        monkeypatch.setattr(plugin_library, "_loaded", {})
        lib = tmp_path / "libdysink_plugins.so"
        lib.write_bytes(b"a plugin library")
        out = tb.build_engines(str(bundle_copy), out=str(tmp_path / f"built-{kind}"), plugins=str(lib))
        return trb.TensorRTBackend(Bundle.load(out)), trt, rt
    return make


def _started(backend):
    spec = backend.specs["dit_step"]
    prompt = np.zeros(backend.specs["text_encoder"].input("prompt_embeds").shape, np.float32)
    backend.start(prompt, spec.input("k_pool_0").shape[0])
    return spec


def _layer_ops(net):
    return [(layer.kind, layer.args.get("op", layer.args.get("to"))) for layer in net.layers]


@pytest.mark.parametrize("kind, qtype", [("int8", "INT8"), ("fp8", "FP8")])
def test_the_quantise_engine_network(q8, kind, qtype):
    backend, trt, _ = q8(kind, cc="sm_89")
    kv = tuple(backend.specs["dit_step"].output("k_new").shape)
    net, _ = trt.network_with_output("q")
    assert net.flags == 1 << 0                                   # strongly typed (the stand-in's STRONGLY_TYPED = 0)
    assert [(t.name, t.dtype, t.shape) for t in net.inputs] == [("x", "FLOAT", kv)]
    assert [(t.name, t.dtype, t.shape) for t in net.outputs] == [("q", qtype, kv), ("scale", "FLOAT", kv[:3])]
    assert _layer_ops(net) == [("unary", "abs"), ("reduce", "max"), ("constant", None), ("constant", None),
                               ("elementwise", "greater"), ("elementwise", "div"), ("constant", None), ("select", None),
                               ("elementwise", "div"), ("elementwise", "min"), ("constant", None),
                               ("elementwise", "max"), ("constant", None), ("quantize", qtype), ("shuffle", None)]
    reduce = net.layers[1]
    assert reduce.args["axes"] == 1 << 3 and reduce.args["keep_dims"]          # max over D, per (token, head)
    qmax = {"int8": 127.0, "fp8": 448.0}[kind]
    assert net.layers[2].args["value"].item() == qmax and net.layers[10].args["value"].item() == -qmax
    backend.close()


@pytest.mark.parametrize("kind, model_dtype", [("int8", "float32"), ("int8", "float16"), ("fp8", "bfloat16")])
def test_the_quantise_network_computes_quantise_page(kind, model_dtype):
    """The recorded network, evaluated with each layer's documented semantics, equals np_quantise_page bit
    for bit: all-zero rows (scale 1), ties (x.5 rounds to even), saturated maxima, model-dtype inputs."""
    import ml_dtypes

    trt = FakeTensorRT()
    shape = (2, 6, 2, 8)
    ops = _Ops(trt, None, trt.Runtime(None), model_dtype, (4, 1, 2, 2), lambda *a: None, pages=kind, kv_shape=shape)
    assert ops._quantise is not None
    net, _ = trt.network_with_output("q")
    if model_dtype != "float32":
        assert net.inputs[0].dtype == {"float16": "HALF", "bfloat16": "BF16"}[model_dtype]
        assert net.layers[0].kind == "cast" and net.layers[0].args["to"] == "FLOAT"
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    x[0, 1, 0] = 0.0                                              # an all-zero row
    x[1, 2, 1] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, 126.5, -127]    # amax 127: scale 1, ties to even
    x[1, 3, 0, 0] = 1e4                                           # one large element
    x = x.astype({"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[model_dtype])
    got = net.evaluate({"x": x.astype(np.float32)})
    q, scale = np_quantise_page(x, kind)
    np.testing.assert_array_equal(got["scale"], scale)
    np.testing.assert_array_equal(got["q"].view(np.uint8), q.view(np.uint8))
    assert scale[0, 1, 0] == 1.0 and not got["q"][0, 1, 0].astype(np.float32).any()


def test_write_page_quantises_then_copies_pools_and_scales(q8):
    backend, trt, rt = q8("int8")
    spec = _started(backend)
    layers, L, H, D = spec.output("k_new").shape
    rows, scales = L * H * D, L * H * 4                    # bytes of one page in one layer: int8 rows, scales
    k_new, v_new = backend.buffers[("dit_step", "k_new")], backend.buffers[("dit_step", "v_new")]
    net, ctx = trt.network_with_output("q")
    log = trt.log = rt.log = []
    page = 2
    backend.write_page(page, k_new, v_new)
    execs = [e for e in log if e[0] == "execute"]
    assert [e[1] for e in execs] == [net, net]                      # once for K, once for V
    q, s = execs[0][2]["q"], execs[0][2]["scale"]
    assert [e[2]["x"] for e in execs] == [k_new.ptr, v_new.ptr] and execs[1][2]["q"] == q
    expected = []
    for kind, new in (("k", k_new), ("v", v_new)):
        expected.append(("execute", net, {"x": new.ptr, "q": q, "scale": s}))
        buf = lambda name: backend.buffers[("dit_step", name)].ptr   # noqa: E731
        expected += [("cudaMemcpyAsync", (buf(f"{kind}_scale_{i}") + page * scales, s + i * scales, scales, D2D,
                                          backend.cuda.stream)) for i in range(layers)]
        expected += [("cudaMemcpyAsync", (buf(f"{kind}_pool_{i}") + page * rows, q + i * rows, rows, D2D,
                                          backend.cuda.stream)) for i in range(layers)]
    assert log == expected                                   # on the stream, in this order, no sync
    backend.close()


def test_an_unwritten_page_reads_zeros_with_scales_one(q8):
    backend, _, rt = q8("int8")
    rt.log = []
    spec = _started(backend)
    layers = spec.output("k_new").shape[0]
    shape = spec.input("k_scale_0").shape
    bufs = [backend.buffers[("dit_step", f"{k}_scale_{i}")].ptr for k in "kv" for i in range(layers)]
    host, nbytes, _ = backend.cuda.staging[bufs[0]]
    ones = np.frombuffer((ctypes.c_char * nbytes).from_address(host), np.float32)
    assert nbytes == 4 * int(np.prod(shape)) and (ones == 1.0).all()
    copies = [a for n, a in rt.log if n == "cudaMemcpyAsync" and a[3] == D2D]
    assert [(a[0], a[1], a[2]) for a in copies] == [(b, bufs[0], nbytes) for b in bufs[1:]]
    pools = {backend.buffers[("dit_step", f"{k}_pool_{i}")].ptr for k in "kv" for i in range(layers)}
    memset = {a[0] for n, a in rt.log if n == "cudaMemsetAsync" and a[1] == 0}
    assert pools <= memset                                   # pools start zeroed
    backend.close()


def test_the_host_bank_carries_the_scales(q8):
    backend, _, rt = q8("int8")
    spec = _started(backend)
    layers, L, H, D = spec.output("k_new").shape
    rows, scales = L * H * D, L * H * 4
    store = backend.host_store(3)
    assert store["entry_bytes"] == layers * (2 * rows + 2 * scales)
    rt.log = []
    backend.page_to_host(1, store, 2)
    got = [(a[0], a[1], a[2]) for n, a in rt.log if n == "cudaMemcpyAsync" and a[3] == D2H]
    host, want = store["ptr"] + 2 * store["entry_bytes"], []
    for name, n in (("k_pool", rows), ("v_pool", rows), ("k_scale", scales), ("v_scale", scales)):
        for i in range(layers):
            want.append((host, backend.buffers[("dit_step", f"{name}_{i}")].ptr + n, n))
            host += n
    assert got == want
    # An entry in that layout reads back dequantised.
    rng = np.random.default_rng(1)
    k, v = (rng.standard_normal((layers, L, H, D)).astype(np.float32) for _ in range(2))
    (qk, sk), (qv, sv) = np_quantise_page(k, "int8"), np_quantise_page(v, "int8")
    blob = b"".join(a.tobytes() for a in (qk, qv, sk, sv))
    ctypes.memmove(store["ptr"] + store["entry_bytes"], blob, len(blob))
    rk, rv = backend.read_host_page(store, 1)
    np.testing.assert_array_equal(rk, np_dequantise_pages(qk, sk, np.float32))
    np.testing.assert_array_equal(rv, np_dequantise_pages(qv, sv, np.float32))
    backend.close()


def test_bf16_pages_under_an_fp32_model_are_refused(monkeypatch, bundle_copy, tmp_path):
    _with_pages(bundle_copy, "bf16")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(tb, "compute_capability", lambda: "sm_87")
    for call in (lambda: tb.build_engines(str(bundle_copy), out=str(tmp_path / "x")),
                 lambda: trb.TensorRTBackend(Bundle.load(bundle_copy))):
        with pytest.raises(DysinkError) as info:
            call()
        msg = str(info.value)
        assert "stores bf16 K/V pages under an fp32 model" in msg and "plain GatedSinkAttention" in msg
        assert "--kv-cache-dtype auto or int8" in msg and "\n" not in msg
    assert not (tmp_path / "x").exists()
    tb.build_engines(str(bundle_copy), graphs=["retrieve"], out=str(tmp_path / "y"), native=True)  # no dit_step: built


def test_fp8_pages_below_sm_89_are_refused(q8):
    with pytest.raises(DysinkError, match=r"stores fp8 K/V pages, which need sm_89 or newer; this GPU is sm_87: "
                                          r"export with --kv-cache-dtype int8$"):
        q8("fp8", cc="sm_87")


def test_engine_feeds_of_8bit_pages():
    """run_graph (dysink-export check --engines) uploads 8-bit pools as their bytes."""
    import ml_dtypes
    from types import SimpleNamespace as T

    ints = trb._host_input(T(name="k_pool_0", dtype="int8"), np.array([[-127, 3]], np.int8))
    assert ints.dtype == np.uint8 and ints.view(np.int8).tolist() == [[-127, 3]]
    e4m3 = np.array([1.5, -448.0], ml_dtypes.float8_e4m3fn)
    assert trb._host_input(T(name="k_pool_0", dtype="float8e4m3fn"), e4m3).tobytes() == e4m3.tobytes()
    bits = T(numpy=lambda: e4m3.view(np.uint8))                    # an OrtValue over the bits
    assert trb._host_input(T(name="k_pool_0", dtype="float8e4m3fn"), bits).tobytes() == e4m3.tobytes()
    with pytest.raises(DysinkError, match="input k_pool_0 holds float8e4m3fn pages: feed their 8-bit values or bits"):
        trb._host_input(T(name="k_pool_0", dtype="float8e4m3fn"), np.zeros(2, np.float32))
