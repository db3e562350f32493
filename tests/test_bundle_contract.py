"""Tampered bundles (issue 22): a graph file replaced together with its checksum must still match
the manifest's I/O contract when it is loaded (extra, renamed or retyped inputs, a removed output,
another static shape: one line naming the graph, the tensor and what differs); a truncated graph
is one line in `inspect --quick`, `trt-onnx`, `check` and `check --trt`, not a protobuf traceback;
a manifest field of the wrong type is one line, not an AttributeError.

The bundles here are made by hand, fast: every graph of the tiny preset's contract as a small ONNX
graph with the contract's inputs and constant outputs of the contract's shapes (no export, no torch
except where `check` builds its reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from dysink_deploy.bundle import MANIFEST_NAME, Bundle, sha256_file, write_manifest  # noqa: E402
from dysink_deploy.cli.export_cli import main as export_main  # noqa: E402
from dysink_deploy.config import model_preset  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.graphs import graph_specs  # noqa: E402

ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
        "int64": TensorProto.INT64, "int32": TensorProto.INT32, "bool": TensorProto.BOOL}


def _graph(spec):
    """The contract's inputs; each output a ConstantOfShape of its static shape."""
    vi = helper.make_tensor_value_info
    nodes = []
    for t in spec.outputs:
        nodes.append(helper.make_node("Constant", [], [f"{t.name}__shape"], value=helper.make_tensor(
            f"{t.name}__s", TensorProto.INT64, [len(t.shape)], list(t.shape))))
        nodes.append(helper.make_node("ConstantOfShape", [f"{t.name}__shape"], [t.name],
                                      value=helper.make_tensor(f"{t.name}__v", ELEM[t.dtype], [1], [0])))
    graph = helper.make_graph(nodes, spec.name, [vi(t.name, ELEM[t.dtype], list(t.shape)) for t in spec.inputs],
                              [vi(t.name, ELEM[t.dtype], list(t.shape)) for t in spec.outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _bundle(root: Path, precision: str = "fp32") -> Path:
    model = model_preset("tiny")
    stream = model.default_stream()
    specs = graph_specs(model, stream, precision)
    root.mkdir()
    for name, spec in specs.items():
        onnx.save(_graph(spec), str(root / f"{name}.onnx"))
    write_manifest(root, model, stream, precision, {n: {"file": f"{n}.onnx"} for n in specs},
                   extra={"checkpoints": {"random_seed": 0}, "versions": {"onnx": onnx.__version__}})
    return root


def _rewrite(root: Path, name: str, edit) -> None:
    """Change graph `name` with `edit(ModelProto)` and record its new checksum (a tampered bundle
    whose manifest still agrees with its files)."""
    path = root / f"{name}.onnx"
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))
    _rehash(root, name)


def _rehash(root: Path, name: str) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    path = root / manifest["graphs"][name]["file"]
    manifest["graphs"][name].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def _io(model, name):
    return next(v for v in list(model.graph.input) + list(model.graph.output) if v.name == name)


def _extra_input(m):
    m.graph.input.append(helper.make_tensor_value_info("debug_scale", TensorProto.FLOAT, [1]))


def _rename_input(m):
    _io(m, "queries").name = "query"


def _retype_input(m):
    _io(m, "bank_start").type.tensor_type.elem_type = TensorProto.INT32


def _remove_output(m):
    keep = [o for o in m.graph.output if o.name != "scores"]
    del m.graph.output[:]
    m.graph.output.extend(keep)


def _reshape_input(m):
    _io(m, "bank_feats").type.tensor_type.shape.dim[0].dim_value += 1


def _symbolic_input(m):
    dim = _io(m, "queries").type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "n"


TAMPERED = [
    (_extra_input, "it has input 'debug_scale' that the contract does not list"),
    (_rename_input, "input 'queries' is named 'query' in the file"),
    (_retype_input, "input 'bank_start' is int32, the contract says int64"),
    (_remove_output, "it lacks output 'scores'"),
    (_reshape_input, "input 'bank_feats' has shape [17, "),
    (_symbolic_input, "input 'queries' has shape [n, "),
]


@pytest.fixture
def fake(tmp_path):
    return _bundle(tmp_path / "b")


def _one_error_line(res, needle):
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], res.output
    return lines[-1]


def test_the_hand_made_bundle_is_a_valid_one(fake):
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(Bundle.load(fake), threads=1)
    assert set(backend.sessions) == set(Bundle.load(fake).graphs)
    res = CliRunner().invoke(export_main, ["inspect", "--bundle", str(fake), "--quick"])
    assert res.exit_code == 0 and "VALID" in res.output, res.output


@pytest.mark.parametrize("edit, what", TAMPERED, ids=[e.__name__.strip("_") for e, _ in TAMPERED])
def test_a_graph_that_breaks_the_contract_is_refused_when_loaded(fake, edit, what):
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    _rewrite(fake, "retrieve", edit)
    bundle = Bundle.load(fake)                   # the manifest and the checksums agree: this passes
    with pytest.raises(DysinkError) as exc:
        OnnxRuntimeBackend(bundle, threads=1)
    text = str(exc.value)
    assert "\n" not in text and "graph retrieve" in text and what in text and "re-export the bundle" in text, text


@pytest.mark.parametrize("edit, what", TAMPERED[:4], ids=[e.__name__.strip("_") for e, _ in TAMPERED[:4]])
def test_inspect_and_trt_onnx_refuse_a_graph_that_breaks_the_contract(fake, tmp_path, edit, what):
    _rewrite(fake, "retrieve", edit)
    for args in (["inspect", "--bundle", str(fake), "--quick"], ["inspect", "--bundle", str(fake)],
                 ["trt-onnx", "--bundle", str(fake), "--out", str(tmp_path / "trt")]):
        _one_error_line(CliRunner().invoke(export_main, args), what)
    assert not (tmp_path / "trt").exists()


def test_dysink_run_refuses_a_tampered_graph_in_one_line(fake, tmp_path):
    from dysink_deploy.runtime import cli as run_cli

    _rewrite(fake, "dit_step", _extra_input)
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--backend", "onnxruntime", "--bundle", str(fake), "--blocks",
                                            "1", "--out", str(tmp_path / "out")])
    _one_error_line(res, "graph dit_step")
    assert not (tmp_path / "out").exists()


def _truncate(root: Path, name: str, keep: int) -> None:
    path = root / f"{name}.onnx"
    path.write_bytes(path.read_bytes()[:keep])
    _rehash(root, name)


@pytest.mark.parametrize("keep", [7, 200])
def test_a_truncated_graph_is_one_line_in_inspect_and_trt_onnx(fake, tmp_path, keep):
    _truncate(fake, "vae_decode", keep)
    for args in (["inspect", "--bundle", str(fake), "--quick"], ["inspect", "--bundle", str(fake)],
                 ["trt-onnx", "--bundle", str(fake), "--out", str(tmp_path / "trt")],
                 ["check", "--bundle", str(fake), "--trt", "10.13"]):
        line = _one_error_line(CliRunner().invoke(export_main, args), "graph vae_decode")
        assert "re-export the bundle" in line, line
    assert not (tmp_path / "trt").exists()


def test_a_truncated_bf16_graph_is_one_line_in_check(tmp_path):
    pytest.importorskip("torch")
    root = _bundle(tmp_path / "b16", "bf16")
    _truncate(root, "text_encoder", 200)        # the first graph check compares
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(root), "--blocks", "0", "--threads", "1"])
    _one_error_line(res, "graph text_encoder")


def test_a_truncated_graph_is_one_line_for_build_parsing(fake):
    from dysink_deploy.export.trt_onnx import function_free_bytes, native_bytes

    _truncate(fake, "retrieve", 200)
    for fn in (function_free_bytes, native_bytes):
        with pytest.raises(DysinkError) as exc:
            fn(fake / "retrieve.onnx")
        assert "not a complete ONNX model" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("field, value, named", [
    ("checkpoints", "seed 0", "field checkpoints is a string, expected an object"),
    ("versions", 5, "field versions is an integer"),
    ("engines", {"retrieve": "retrieve.engine"}, "field engines.retrieve is a string"),
    ("engines", {"retrieve": {"sha256": "0"}}, "engine entry retrieve has no file name"),
    ("text_encoder", "umt5-xxl", "field text_encoder is a string"),
    ("interactive", "yes", "field interactive is a string, expected true or false"),
    ("checkpoints", {"random_seed": True}, "field checkpoints.random_seed is true/false, expected an integer"),
    ("checkpoints", {"dit": 5}, "field checkpoints.dit is an integer, expected a string or null"),
])
def test_a_manifest_field_of_the_wrong_type_is_one_line(fake, field, value, named):
    manifest = json.loads((fake / MANIFEST_NAME).read_text())
    manifest[field] = value
    (fake / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DysinkError) as exc:
        Bundle.load(fake)
    text = str(exc.value)
    assert "\n" not in text and named in text and "re-export the bundle" in text, text
    _one_error_line(CliRunner().invoke(export_main, ["inspect", "--bundle", str(fake), "--quick"]), named)


def test_a_graph_entry_field_of_the_wrong_type_is_one_line(fake):
    manifest = json.loads((fake / MANIFEST_NAME).read_text())
    manifest["graphs"]["retrieve"]["bytes"] = str(manifest["graphs"]["retrieve"]["bytes"])
    (fake / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DysinkError) as exc:
        Bundle.load(fake)
    assert "field graphs.retrieve.bytes is a string, expected an integer" in str(exc.value)
