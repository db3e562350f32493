"""`dysink-export check --trt`: the tiny bundle is clean for TensorRT 10.3 and 11; hand-made models
show each rule firing (one line per problem)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.errors import DysinkError
from dysink_deploy.export.trt_lint import lint_model, parse_operators_md


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tiny_bundle_is_clean_for_10_3_and_11(bundles, precision):
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundles(precision)), "--trt", "10.3",
                                           "--trt", "11"])
    assert res.exit_code == 0, res.output
    assert "- [" in res.output and res.output.strip().splitlines()[-1].startswith("PASSED")


def _model(nodes, inputs, outputs, opset=20, ir=9, inits=(), domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports, ir_version=ir)


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _messages(model, version="10.3"):
    return [str(p) for p in lint_model("g", model, version)]


def test_opset_and_ir_version_ranges():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, [4])],
               [_vi("y", TensorProto.FLOAT, [4])], opset=23, ir=11)
    msgs = _messages(m, "10.3")
    assert any("opset 23 is outside TensorRT 10.3's 9..20" in s for s in msgs)
    assert any("IR version 11 is newer than TensorRT 10.3's ONNX (10)" in s for s in msgs)
    assert _messages(m, "11") == []


def test_double_arithmetic_and_unsupported_ops():
    m = _model([helper.make_node("Cos", ["x"], ["y"]), helper.make_node("Unique", ["y"], ["z"])],
               [_vi("x", TensorProto.DOUBLE, [4])], [_vi("z", TensorProto.DOUBLE, None)])
    msgs = _messages(m)
    assert any("(Cos): DOUBLE input; TensorRT 10.3 supports FP32, FP16, BF16" in s for s in msgs)
    assert any("Unique is not supported by TensorRT 10.3's parser" in s for s in msgs)


def test_int64_only_where_the_matrix_allows_it():
    m = _model([helper.make_node("Sqrt", ["x"], ["y"])], [_vi("x", TensorProto.INT64, [4])],
               [_vi("y", TensorProto.INT64, [4])])
    assert any("INT64 input" in s for s in _messages(m))


def test_custom_nodes_need_plugin_attributes_and_known_domains():
    ok = helper.make_node("RetrieveSinks", ["a"], ["b"], domain="dysink", plugin_namespace="dysink",
                          plugin_version="1")
    bad = helper.make_node("GatedSinkAttention", ["a"], ["c"], domain="dysink")
    foreign = helper.make_node("FusedMatMul", ["a", "a"], ["d"], domain="com.microsoft")
    m = _model([ok, bad, foreign], [_vi("a", TensorProto.FLOAT, [4])],
               [_vi(n, TensorProto.FLOAT, None) for n in "bcd"], domains=("dysink", "com.microsoft"))
    msgs = _messages(m)
    assert len(msgs) == 2
    assert "TensorRT would not bind the plugin" in msgs[0] and "'com.microsoft' has no TensorRT importer" in msgs[1]


def test_tensors_at_2_31_elements():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, [2 ** 16, 2 ** 15])],
               [_vi("y", TensorProto.FLOAT, [2 ** 16, 2 ** 15])])
    assert any("2147483648 elements" in s for s in _messages(m))


def test_restrictions_we_rely_on():
    axes = helper.make_node("ReduceMean", ["x", "axes_in"], ["r"])
    resize = helper.make_node("Resize", ["x", "", "scales"], ["s"], mode="cubic")
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0)
    scales = numpy_helper.from_array(np.array([2.0], np.float32), "scales")
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    m = _model([axes, resize, topk], [_vi("x", TensorProto.FLOAT, [4]), _vi("axes_in", TensorProto.INT64, [1])],
               [_vi("r", TensorProto.FLOAT, None), _vi("s", TensorProto.FLOAT, None), _vi("v", TensorProto.FLOAT, None),
                _vi("i", TensorProto.INT64, None)], inits=(scales, k))
    msgs = _messages(m)
    assert any("axes must be an initializer or constant" in s for s in msgs)
    assert any("Resize mode cubic" in s for s in msgs)
    assert any("TopK must be sorted" in s for s in msgs)


def test_unknown_version_and_matrix_parsing():
    m = _model([], [], [])
    with pytest.raises(DysinkError, match="--trt must be one of 10.3, 10.13, 11"):
        lint_model("g", m, "9.0")
    text = ("| Operator | Supported | Supported Types | Restrictions |\n|---|---|---|---|\n"
            "| Abs | Y | FP32, FP16 |\n| ConstantOfShape | Y | FP32, INF64 |\n| Mod | N |\n")
    ops = parse_operators_md(text)
    assert ops == {"Abs": {"supported": True, "types": ["FP32", "FP16"]},
                   "ConstantOfShape": {"supported": True, "types": ["FP32", "INT64"]},
                   "Mod": {"supported": False, "types": []}}


def test_bf16_bundle_needs_tensorrt_11(bundles):
    """bf16 exports at opset 22 (ONNX Conv has no bfloat16 before): clean for 11, flagged for 10.3."""
    from dysink_deploy.bundle import Bundle
    from dysink_deploy.export.trt_lint import lint_bundle

    bundle = Bundle.load(bundles("bf16"))
    assert bundle.manifest["opset"] == 22 and bundle.manifest["ir_version"] == 10
    assert lint_bundle(bundle, "11") == []
    problems = [str(p) for p in lint_bundle(bundle, "10.3")]
    assert problems and all("opset 22 is outside TensorRT 10.3's 9..20" in p for p in problems)


@pytest.mark.parametrize("kwargs, message", [
    (dict(opset=17), "--opset must lie in 18..23"),
    (dict(opset=20, ir_version=8), "opset 20 needs IR version >= 9"),
    (dict(opset=20, precision="bf16"), "a bf16 bundle needs --opset >= 22"),
])
def test_bad_opset_choices(tmp_path, kwargs, message):
    from dysink_deploy.export.onnx_export import export_onnx

    precision = kwargs.pop("precision", "fp32")
    with pytest.raises(DysinkError, match=message):
        export_onnx("tiny", precision=precision, out=tmp_path / "b", graphs=["retrieve"], **kwargs)
    assert not (tmp_path / "b").exists()


def test_opset_23_export_still_works(tmp_path):
    """The ONNX Runtime-oriented opset remains available (function bodies stamped to match)."""
    import onnx

    from dysink_deploy.export.onnx_export import export_onnx

    path = export_onnx("tiny", out=tmp_path / "b23", graphs=["retrieve"], opset=23)
    proto = onnx.load(str(path / "retrieve.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 23 and proto.ir_version == 11
    assert [o.version for f in proto.functions for o in f.opset_import if o.domain == ""] == [23]
