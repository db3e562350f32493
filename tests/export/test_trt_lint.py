"""`dysink-export check --trt`: the tiny bundle is clean for TensorRT 10.3 and 11; hand-made models
show each rule firing (one line per problem)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import AttributeProto, TensorProto, helper, numpy_helper

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
                          plugin_version="1", sink_size=0, k=2)
    bad = helper.make_node("GatedSinkAttention", ["a"], ["c"], domain="dysink", threshold=0.5, sink_kv_bf16=1,
                           fixed_sinks=0)
    foreign = helper.make_node("FusedMatMul", ["a", "a"], ["d"], domain="com.microsoft")
    m = _model([ok, bad, foreign], [_vi("a", TensorProto.FLOAT, [4])],
               [_vi(n, TensorProto.FLOAT, [4]) for n in "bcd"], domains=("dysink", "com.microsoft"))
    msgs = _messages(m)
    assert len(msgs) == 2, msgs
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


# --- plugin attributes: the creators' rules (plugins/cpp/src/*_plugin.cpp) --------------------------------

GATE = dict(plugin_namespace="dysink", plugin_version="1", threshold=0.5, sink_kv_bf16=1, fixed_sinks=0)
RETRIEVE = dict(plugin_namespace="dysink", plugin_version="1", sink_size=0, k=2)


def _custom(op, attrs):
    node = helper.make_node(op, ["a"], ["b"], domain="dysink", **attrs)
    return _model([node], [_vi("a", TensorProto.FLOAT, [4])], [_vi("b", TensorProto.FLOAT, [4])],
                  domains=("dysink",))


def _without(attrs, name):
    return {k: v for k, v in attrs.items() if k != name}


@pytest.mark.parametrize("op, attrs, message", [
    ("GatedSinkAttention", {**GATE, "threshold": float("nan")}, "threshold must be a finite number, got nan"),
    ("GatedSinkAttention", {**GATE, "threshold": float("inf")}, "threshold must be a finite number, got inf"),
    ("GatedSinkAttention", _without(GATE, "threshold"), "attribute threshold is missing"),
    ("GatedSinkAttention", {**GATE, "threshold": 1}, "attribute threshold must be a float (FLOAT), got INT"),
    ("GatedSinkAttention", _without(GATE, "fixed_sinks"), "attribute fixed_sinks is missing"),
    ("GatedSinkAttention", {**GATE, "fixed_sinks": 65}, "fixed_sinks must be 0..64, got 65"),
    ("GatedSinkAttention", {**GATE, "fixed_sinks": -1}, "fixed_sinks must be 0..64, got -1"),
    ("GatedSinkAttention", _without(GATE, "sink_kv_bf16"), "attribute sink_kv_bf16 is missing"),
    ("GatedSinkAttention", {**GATE, "sink_kv_bf16": 2}, "sink_kv_bf16 must be 0 or 1, got 2"),
    ("GatedSinkAttention", {**GATE, "sink_kv_bf16": 1.0}, "attribute sink_kv_bf16 must be an integer (INT), got FLOAT"),
    ("GatedSinkAttention", {**GATE, "sink_kv_bf16": "1"}, "must be an integer (INT), got STRING"),
    ("GatedSinkAttention", {**GATE, "plugin_version": "2"}, "TensorRT would not bind the plugin"),
    ("RetrieveSinks", {**RETRIEVE, "k": 0}, "k must be 1..8, got 0"),
    ("RetrieveSinks", {**RETRIEVE, "k": 9}, "k must be 1..8, got 9"),
    ("RetrieveSinks", {**RETRIEVE, "k": 2 ** 32 + 1}, "k must be 1..8, got 4294967297"),
    ("RetrieveSinks", _without(RETRIEVE, "k"), "attribute k is missing"),
    ("RetrieveSinks", {**RETRIEVE, "sink_size": -3}, "sink_size must be 0..1073741824, got -3"),
    ("RetrieveSinks", _without(RETRIEVE, "sink_size"), "attribute sink_size is missing"),
    ("RetrieveSinks", {**RETRIEVE, "k": []}, "attribute k is empty"),
])
def test_plugin_attributes_follow_the_creators(op, attrs, message):
    if attrs.get("k") == []:
        node = helper.make_node(op, ["a"], ["b"], domain="dysink", **_without(attrs, "k"))
        node.attribute.append(helper.make_attribute("k", [], attr_type=AttributeProto.INTS))
        m = _model([node], [_vi("a", TensorProto.FLOAT, [4])], [_vi("b", TensorProto.FLOAT, [4])],
                   domains=("dysink",))
    else:
        m = _custom(op, attrs)
    msgs = _messages(m)
    assert len(msgs) == 1 and message in msgs[0], msgs


@pytest.mark.parametrize("op, attrs", [("GatedSinkAttention", GATE), ("RetrieveSinks", RETRIEVE),
                                       ("GatedSinkAttention", {**GATE, "fixed_sinks": 64, "threshold": -2.0}),
                                       ("RetrieveSinks", {**RETRIEVE, "k": 8, "sink_size": 3})])
def test_plugin_attributes_the_creators_accept(op, attrs):
    assert _messages(_custom(op, attrs)) == []


def _retrieve_node_model(query_valid_type, slots_type=TensorProto.INT64):
    names = ["bank_feats", "bank_start", "queries", "query_valid", "current_start", "window_frames"]
    types = [TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT, query_valid_type, TensorProto.INT64,
             TensorProto.INT64]
    shapes = [[6, 8], [6], [3, 8], [3], [], []]
    node = helper.make_node("RetrieveSinks", names, ["slots", "scores"], domain="dysink", **RETRIEVE)
    return _model([node], [_vi(n, t, s) for n, t, s in zip(names, types, shapes)],
                  [_vi("slots", slots_type, [2]), _vi("scores", TensorProto.FLOAT, [2])], domains=("dysink",))


def test_plugin_inputs_and_outputs_are_never_bool_or_uint8():
    """TensorRT plugin I/O cannot be BOOL or UINT8 (NvInferRuntimePlugin.h): a bundle from before the int32
    query_valid gets one line saying so; the current contract (int32) is clean."""
    assert _messages(_retrieve_node_model(TensorProto.INT32)) == []
    msgs = _messages(_retrieve_node_model(TensorProto.BOOL))
    assert len(msgs) == 1, msgs
    assert "node 0 (RetrieveSinks): input query_valid is BOOL: TensorRT plugins take no BOOL or UINT8" in msgs[0]
    assert "re-export the bundle with this version's dysink-export onnx" in msgs[0]
    msgs = _messages(_retrieve_node_model(TensorProto.UINT8, slots_type=TensorProto.UINT8), "11")
    assert len(msgs) == 2 and "input query_valid is UINT8" in msgs[0] and "output slots is UINT8" in msgs[1], msgs


def test_old_bundle_with_a_bool_query_valid_fails_the_lint(bundles):
    """The exported retrieve graph, its query_valid turned back into the old bool: one line per TensorRT version."""
    import onnx

    from dysink_deploy.bundle import Bundle

    proto = onnx.load(str(Bundle.load(bundles("fp32")).graph_path("retrieve")))
    assert _messages(proto) == []
    (vi,) = [i for i in proto.graph.input if i.name == "query_valid"]
    assert vi.type.tensor_type.elem_type == TensorProto.INT32
    vi.type.tensor_type.elem_type = TensorProto.BOOL
    for version in ("10.3", "11"):
        msgs = _messages(proto, version)
        assert len(msgs) == 1 and "(RetrieveSinks): input query_valid is BOOL" in msgs[0], msgs


def test_plugin_limits_match_the_cpp_creators():
    """The linter's numbers are the C++ creators' (read from the sources, so a change there fails here)."""
    import re
    from pathlib import Path

    from dysink_deploy.export import trt_lint
    from dysink_deploy.plugins.variants import MAX_TOP_K

    src = Path(__file__).resolve().parents[2] / "plugins" / "cpp" / "src"
    gate = (src / "gated_sink_attention_plugin.cpp").read_text()
    retrieve = (src / "retrieve_sinks_plugin.cpp").read_text()
    header = (src / "plugins.h").read_text()
    assert re.search(r"fixedSinks < 0 \|\| fixedSinks > (\d+)", gate).group(1) == str(trt_lint.MAX_FIXED_SINKS)
    assert "std::isfinite(threshold)" in gate and "sinkKvBf16 != 0 && sinkKvBf16 != 1" in gate
    assert "needs the attributes threshold, sink_kv_bf16 and fixed_sinks" in gate
    assert int(re.search(r"kMaxK = (\d+);", header).group(1)) == MAX_TOP_K
    assert "k < 1 || k > RetrieveSinksPlugin::kMaxK" in retrieve
    assert 1 << int(re.search(r"sinkSize < 0 \|\| sinkSize > \(int64_t\{1\} << (\d+)\)", retrieve).group(1)) \
        == trt_lint.MAX_SINK_SIZE
    assert "needs the attributes sink_size and k" in retrieve
    assert list(trt_lint.PLUGIN_FIELDS["GatedSinkAttention"]) == ["threshold", "sink_kv_bf16", "fixed_sinks"]
    assert list(trt_lint.PLUGIN_FIELDS["RetrieveSinks"]) == ["sink_size", "k"]


def _edit_graph(bundle_dir, graph, fn):
    """Apply fn to a bundle graph's ModelProto, save it, and record the new file in the manifest."""
    import onnx

    from dysink_deploy.bundle import sha256_file
    from tests.export.conftest import edit_manifest

    path = bundle_dir / f"{graph}.onnx"
    proto = onnx.load(str(path))
    fn(proto)
    onnx.save(proto, str(path))
    edit_manifest(bundle_dir, lambda m: m["graphs"][graph].update(sha256=sha256_file(path),
                                                                   bytes=path.stat().st_size))


def _set_attr(proto, op, name, value):
    nodes = [n for n in proto.graph.node if n.op_type == op]
    assert nodes
    for node in nodes:
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        if value is not None:
            node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.parametrize("graph, op, name, value, message", [
    ("dit_step", "GatedSinkAttention", "threshold", float("nan"), "threshold must be a finite number, got nan"),
    ("dit_step", "GatedSinkAttention", "fixed_sinks", None, "attribute fixed_sinks is missing"),
    ("retrieve", "RetrieveSinks", "k", 0, "k must be 1..8, got 0"),
])
def test_hand_edited_bundle_fails_one_line_per_node(bundle_copy, graph, op, name, value, message):
    import onnx

    _edit_graph(bundle_copy, graph, lambda p: _set_attr(p, op, name, value))
    nodes = sum(n.op_type == op for n in onnx.load(str(bundle_copy / f"{graph}.onnx")).graph.node)
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundle_copy), "--trt", "10.3"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    bad = [line for line in lines if line.startswith("- [x] TensorRT 10.3: ") and ": node " in line]
    assert len(bad) == nodes and all(message in line and f"TensorRT 10.3: {graph}: node" in line for line in bad), \
        res.output
    assert f"{nodes} problems" in res.output and lines[-1].startswith("FAILED")


# --- TopK, subgraphs, static shapes ----------------------------------------------------------------------

def _topk(k_input, inits=(), nodes=(), opset=20, inputs=()):
    topk = helper.make_node("TopK", ["x", k_input], ["v", "i"])
    return _model([*nodes, topk], [_vi("x", TensorProto.FLOAT, [5000]), *inputs],
                  [_vi("v", TensorProto.FLOAT, None), _vi("i", TensorProto.INT64, None)], opset=opset,
                  inits=inits)


def test_topk_k_is_a_constant_below_3840():
    def k_init(value):
        return (numpy_helper.from_array(np.array([value], np.int64), "k"),)

    assert any("TopK's K is 3840: TensorRT needs K < 3840" in s for s in _messages(_topk("k", k_init(3840))))
    assert not any("TopK" in s for s in _messages(_topk("k", k_init(3839))))
    const = helper.make_node("Constant", [], ["kc"], value_ints=[4000])
    assert any("TopK's K is 4000" in s for s in _messages(_topk("kc", nodes=[const])))
    dynamic = _topk("k_in", inputs=[_vi("k_in", TensorProto.INT64, [1])])
    assert any("TopK's K must be an initializer or constant" in s for s in _messages(dynamic))
    old = helper.make_node("TopK", ["x"], ["v", "i"], k=5000)
    m = _model([old], [_vi("x", TensorProto.FLOAT, [6000])], [_vi("v", TensorProto.FLOAT, None),
                                                              _vi("i", TensorProto.INT64, None)], opset=9, ir=4)
    assert any("TopK's K is 5000" in s for s in _messages(m))


def test_subgraphs_are_walked():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [],
                               [_vi("u", TensorProto.FLOAT, [4])])
    k = numpy_helper.from_array(np.array([4000], np.int64), "k_big")
    inner_topk = helper.make_node("TopK", ["x", "k_big"], ["tv", "ti"], name="deep_topk")
    loop_body = helper.make_graph([inner_topk, helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                                  [_vi("iter", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, [])],
                                  [_vi("cond_out", TensorProto.BOOL, []), _vi("tv", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Loop", ["", "c"], ["lo"], name="loop", body=loop_body)], "else",
                               [], [_vi("lo", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    m = _model([node], [_vi("x", TensorProto.FLOAT, [5000]), _vi("c", TensorProto.BOOL, [])],
               [_vi("y", TensorProto.FLOAT, [4])], inits=(k,))
    msgs = _messages(m)
    assert any("node branch (If) > then_branch > node uniq (Unique): Unique is not supported" in s for s in msgs), msgs
    assert any("node branch (If) > else_branch > node loop (Loop) > body > node deep_topk (TopK): TopK's K is 4000"
               in s for s in msgs), msgs


def test_graph_io_must_be_static_but_inference_gaps_are_not_flagged():
    dyn = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", TensorProto.FLOAT, ["batch", 4])],
                 [_vi("y", TensorProto.FLOAT, ["batch", 4])])
    msgs = _messages(dyn)
    assert any("input x: shape [batch, 4] is not static" in s for s in msgs), msgs
    assert any("output y: shape [batch, 4] is not static" in s for s in msgs), msgs
    # shape inference cannot size a Reshape to a computed shape: the intermediate stays unknown, not flagged
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["t"]),
             helper.make_node("Relu", ["t"], ["t2"]), helper.make_node("Relu", ["t2"], ["y"])]
    gap = _model(nodes, [_vi("x", TensorProto.FLOAT, [4])], [_vi("y", TensorProto.FLOAT, [4])])
    assert _messages(gap) == []
    # ... but a symbolic dim the exporter wrote there is a dynamic axis that leaked: one line per symbol
    gap.graph.value_info.extend([_vi("t", TensorProto.FLOAT, ["n"]), _vi("t2", TensorProto.FLOAT, ["n"])])
    msgs = _messages(gap)
    assert len(msgs) == 1 and "tensor t: symbolic dim 'n'" in msgs[0], msgs


def test_tiny_bundle_tensors_are_all_static(bundles):
    """What the static-shape rule rests on: shape inference sizes every tensor of every tiny graph."""
    import onnx
    from onnx import shape_inference

    from dysink_deploy.bundle import Bundle

    bundle = Bundle.load(bundles("fp32"))
    for name in bundle.graphs:
        proto = onnx.load(str(bundle.graph_path(name)), load_external_data=False)
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
        infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        assert {o for n in proto.graph.node for o in n.output if o} <= {vi.name for vi in infos}, name
        assert all(d.HasField("dim_value") for vi in infos for d in vi.type.tensor_type.shape.dim), name


def test_function_bodies_note_before_10_7(bundles):
    """10.3 imports a node as the local function of its name: one informational line, not a problem."""
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundles("fp32")), "--trt", "10.3",
                                           "--trt", "10.13", "--trt", "11"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("- [i]")]
    assert len(notes) == 1 and notes[0].startswith("- [i] TensorRT 10.3: "), res.output
    for text in ("dysink::GatedSinkAttention", "dysink::RetrieveSinks", "instead of the plugins",
                 "dysink-export build removes them", "dysink-export trt-onnx --bundle"):
        assert text in notes[0]
    assert "- [✓] TensorRT 10.3: 6 graphs, 0 problems" in res.output or "- [v] TensorRT 10.3" in res.output
    assert res.output.strip().splitlines()[-1].startswith("PASSED")
