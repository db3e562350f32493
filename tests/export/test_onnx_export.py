"""ONNX export of every graph (tiny preset, CPU): structure, and ONNX Runtime vs the PyTorch reference.

Tolerances, measured (tiny preset, seeded inputs, max abs error):
- fp32: ORT vs torch differs by summation order only: <= 1.5e-5 on O(3)
  outputs (VAE caches), <= 2e-6 elsewhere; checked at 1e-5 * max(1, |ref|).
  Integer outputs (slots) and gate ratios must match exactly.
- fp16: the ORT error against the fp32 reference must be <= 2x the error of
  the same PyTorch model run in fp16 (STYLE.md), + the fp32 floor above.
  Measured ratio ORT/torch-fp16 <= 1.25 (VAE caches), <= 0.9 elsewhere.
- bf16: ORT CPU has no bf16 MatMul/Gemm/Conv/Mul kernels, so numerics are
  checked on `fp32_twin` (bf16 weights and rounding points kept, fp32 math)
  against the same 2x-of-torch-bf16 rule; measured ratio <= 0.75.
"""

import json

import numpy as np
import onnx
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from dysink_deploy.config import model_preset  # noqa: E402
from dysink_deploy.export.fp32_twin import fp32_twin  # noqa: E402
from dysink_deploy.export.graph_modules import graph_module, sample_inputs  # noqa: E402
from dysink_deploy.export.inspect_bundle import io_specs_of  # noqa: E402
from dysink_deploy.export.onnx_export import default_opset  # noqa: E402
from dysink_deploy.graphs import graph_specs  # noqa: E402
from dysink_deploy.models.dtypes import TORCH_DTYPES  # noqa: E402
from dysink_deploy.models.factory import build_models  # noqa: E402

CFG = model_preset("tiny")
STREAM = CFG.default_stream()
GRAPHS = list(graph_specs(CFG, STREAM, "fp32"))
CUSTOM = {"dit_step": ("GatedSinkAttention", 2), "retrieve": ("RetrieveSinks", 1)}


@pytest.fixture(scope="module")
def torch_models():
    cache = {}

    def get(precision):
        if precision not in cache:
            cache[precision] = build_models(CFG).to(TORCH_DTYPES[precision]).eval()
        return cache[precision]
    return get


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _np(t):
    return t.numpy() if t.dtype in (torch.int64, torch.bool) else t.float().numpy()


def _reference(name, models, precision, seed):
    args = sample_inputs(name, CFG, STREAM, precision, seed=seed)
    with torch.no_grad():
        outs = _as_tuple(graph_module(name, models, STREAM)(*args))
    return args, [_np(o) for o in outs]


def _run(session_source, name, args):
    spec = graph_specs(CFG, STREAM, "fp32")[name]
    sess = ort.InferenceSession(session_source, providers=["CPUExecutionProvider"])
    return sess.run(None, {t.name: _np(a) if a.dtype == torch.bfloat16 else a.numpy()
                           for t, a in zip(spec.inputs, args)})


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_files_check_and_match_the_contract(bundles, precision):
    path = bundles(precision)
    specs = graph_specs(CFG, STREAM, precision)
    for name, spec in specs.items():
        f = path / f"{name}.onnx"
        onnx.checker.check_model(str(f), full_check=True)
        proto = onnx.load(str(f))
        ins, outs = io_specs_of(proto)
        assert ins == [(t.name, t.shape, t.dtype) for t in spec.inputs]
        assert outs == [(t.name, t.shape, t.dtype) for t in spec.outputs]
        opsets = {o.domain: o.version for o in proto.opset_import}
        assert opsets[""] == default_opset(precision)[0]
        assert {n.domain for n in proto.graph.node} <= {"", "dysink"}   # no com.microsoft
        # No standard ops the targeted TensorRT parsers (10.3, 10.13) lack.
        assert not {n.op_type for n in proto.graph.node} & {"Attention", "RMSNormalization", "RotaryEmbedding"}
        for fn in proto.functions:
            for o in fn.opset_import:
                assert opsets.get(o.domain) == o.version, (name, fn.name, o.domain)
        custom = [n for n in proto.graph.node if n.domain == "dysink"]
        if name not in CUSTOM:
            assert not custom and not proto.functions
            continue
        op_type, count = CUSTOM[name]
        assert [n.op_type for n in custom] == [op_type] * (count if name != "dit_step" else CFG.dit.layers)
        assert opsets["dysink"] == 1
        assert [f.name for f in proto.functions] == [op_type]
        for node in custom:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["plugin_namespace"] == b"dysink" and attrs["plugin_version"] == b"1"
            if op_type == "GatedSinkAttention":
                assert attrs["threshold"] == pytest.approx(STREAM.gate_threshold)
                assert attrs["sink_kv_bf16"] == int(STREAM.sink_kv_bf16)
            else:
                assert (attrs["sink_size"], attrs["k"]) == (STREAM.sink_size, STREAM.top_k)


@pytest.mark.parametrize("name", GRAPHS)
def test_fp32_matches_reference(bundles, torch_models, name):
    path = bundles("fp32")
    for seed in (1,):
        args, ref = _reference(name, torch_models("fp32"), "fp32", seed)
        got = _run(str(path / f"{name}.onnx"), name, args)
        for spec, r, o in zip(graph_specs(CFG, STREAM, "fp32")[name].outputs, ref, got):
            if spec.dtype == "int64" or spec.name == "ratios":
                np.testing.assert_array_equal(o, r, err_msg=spec.name)
            else:
                np.testing.assert_allclose(o, r, rtol=0, atol=1e-5 * max(1.0, np.abs(r).max()), err_msg=spec.name)


def _low_precision_rule(name, got, ref32, torch_lo):
    for spec, o, r, lo in zip(graph_specs(CFG, STREAM, "fp32")[name].outputs, got, ref32, torch_lo):
        o = o.astype(np.float32) if o.dtype != np.int64 else o
        if spec.dtype == "int64":
            np.testing.assert_array_equal(o, r, err_msg=spec.name)
            continue
        floor = 1e-5 * max(1.0, np.abs(r).max())
        ort_err, torch_err = np.abs(o - r).max(), np.abs(lo - r).max()
        assert ort_err <= 2 * torch_err + floor, f"{name}.{spec.name}: ORT {ort_err:.3g} vs torch {torch_err:.3g}"


@pytest.mark.parametrize("name", GRAPHS)
def test_fp16_error_at_most_twice_torch_fp16(bundles, torch_models, name):
    path = bundles("fp16")
    args16, torch16 = _reference(name, torch_models("fp16"), "fp16", seed=3)
    _, ref32 = _reference(name, torch_models("fp32"), "fp32", seed=3)
    got = _run(str(path / f"{name}.onnx"), name, args16)
    for spec, o in zip(graph_specs(CFG, STREAM, "fp16")[name].outputs, got):
        assert str(o.dtype) == spec.dtype
    _low_precision_rule(name, got, ref32, torch16)


def test_bf16_cannot_run_on_ort_cpu(bundles):
    """Documented limitation: ORT CPU has no bf16 compute kernels (verify on GPU or via fp32_twin)."""
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|implementation"):
        ort.InferenceSession(str(bundles("bf16") / "dit_step.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", GRAPHS)
def test_bf16_twin_error_at_most_twice_torch_bf16(bundles, torch_models, name):
    twin = fp32_twin(onnx.load(str(bundles("bf16") / f"{name}.onnx")))
    onnx.checker.check_model(twin, full_check=True)
    args16, torch16 = _reference(name, torch_models("bf16"), "bf16", seed=4)
    _, ref32 = _reference(name, torch_models("fp32"), "fp32", seed=4)
    got = _run(twin.SerializeToString(), name, args16)
    _low_precision_rule(name, got, ref32, torch16)


def test_fp16_graph_keeps_fp32_islands(bundles):
    """Norm statistics, softmax and the gate run in float32 in an fp16 graph (like the reference)."""
    proto = onnx.load(str(bundles("fp16") / "dit_step.onnx"))
    shape_inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(shape_inferred.graph.value_info) + list(shape_inferred.graph.input)}
    for node in shape_inferred.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMean"):
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (node.op_type, node.name)


def test_fixed_sink_bundle_carries_fixed_sinks_and_matches(tmp_path):
    """sink_size = 3: slot 0 of sink_ids is the fixed sink, not bf16-rounded in the graph either."""
    from dysink_deploy.export.onnx_export import export_onnx

    stream = CFG.default_stream(sink_size=3)
    path = export_onnx("tiny", precision="fp32", out=tmp_path / "b", stream=stream, graphs=["dit_step"])
    model = onnx.load(str(path / "dit_step.onnx"))
    nodes = [n for n in model.graph.node if n.op_type == "GatedSinkAttention"]
    assert nodes and all(onnx.helper.get_attribute_value(a) == 1
                         for n in nodes for a in n.attribute if a.name == "fixed_sinks")
    models = build_models(CFG, seed=0)
    args = sample_inputs("dit_step", CFG, stream, "fp32", seed=2)
    sink_pos = [i for i, s in enumerate(graph_specs(CFG, stream, "fp32")["dit_step"].inputs) if s.name == "sink_ids"][0]
    args[sink_pos] = torch.tensor([1, 2, -1])     # fixed sink page 1, retrieved page 2
    with torch.no_grad():
        ref = [_np(o) for o in _as_tuple(graph_module("dit_step", models, stream)(*args))]
    sess = __import__("onnxruntime").InferenceSession(str(path / "dit_step.onnx"), providers=["CPUExecutionProvider"])
    feeds = {s.name: a.numpy() for s, a in zip(graph_specs(CFG, stream, "fp32")["dit_step"].inputs, args)}
    got = sess.run(None, feeds)
    for r, o in zip(ref, got):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-5 * max(1.0, np.abs(r).max()))


def _conv_weight_ranks(path) -> set[int]:
    proto = onnx.load(str(path))
    inits = {t.name: len(t.dims) for t in proto.graph.initializer}
    return {inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits}


def test_vae_layout_follows_the_precision(bundles):
    """--vae-layout auto: frame-major VAE graphs at fp32 (2D convolutions only, what ONNX Runtime's CPU
    kernels are fast at), Wan's Conv3d at fp16 (TensorRT's)."""
    for precision, layout, conv3d in (("fp32", "frames", False), ("fp16", "channels", True)):
        path = bundles(precision)
        assert json.loads((path / "bundle.json").read_text())["vae_layout"] == layout
        for name in ("vae_decode", "vae_decode_first"):
            assert (5 in _conv_weight_ranks(path / f"{name}.onnx")) == conv3d, (precision, name)
