"""Function-free graphs for TensorRT (export/trt_onnx.py): TensorRT's parser imports a node whose op
name matches a model-local function as that function (before 10.7 always), so `dysink-export build`
parses, and `dysink-export trt-onnx` writes, copies without the `dysink` functions. Checked on the
tiny bundle, with its weights moved to external data where that matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from dysink_deploy.bundle import sha256_file
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.errors import DysinkError
from dysink_deploy.export import trt_onnx
from tests.export.conftest import edit_manifest

PLUGIN_GRAPHS = {"dit_step": "GatedSinkAttention", "retrieve": "RetrieveSinks"}


def _custom_nodes(model):
    return [(n.op_type, n.domain, [a.SerializeToString() for a in n.attribute])
            for n in model.graph.node if n.domain == "dysink"]


def _externalize(graph_dir: Path, name: str, data_name: str | None = None) -> Path:
    """Move the weights of graph_dir/name.onnx to an external data file beside it; returns that file."""
    path = graph_dir / f"{name}.onnx"
    data_name = data_name or f"{name}.onnx.data"
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name)
    return graph_dir / data_name


def _externalize_in_bundle(bundle_dir: Path, name: str) -> Path:
    data = _externalize(bundle_dir, name)
    path = bundle_dir / f"{name}.onnx"
    edit_manifest(bundle_dir, lambda m: m["graphs"][name].update(
        sha256=sha256_file(path), bytes=path.stat().st_size,
        external_data=[{"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}]))
    return data


def test_domain_is_the_exporters():
    from dysink_deploy.ops.gated_sink_attention import ONNX_DOMAIN

    assert trt_onnx.PLUGIN_DOMAIN == ONNX_DOMAIN


def test_torch_free_and_tensorrt_free():
    code = ("import sys; import dysink_deploy.export.trt_onnx, dysink_deploy.export.trt_build, "
            "dysink_deploy.export.trt_lint; bad = [m for m in ('torch', 'tensorrt', 'triton') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("graph", sorted(PLUGIN_GRAPHS))
def test_function_free_bytes_keep_nodes_attributes_and_external_data(bundles, tmp_path, monkeypatch, graph):
    import shutil

    shutil.copy(bundles("fp32") / f"{graph}.onnx", tmp_path / f"{graph}.onnx")
    data = _externalize(tmp_path, graph)
    original = onnx.load(str(tmp_path / f"{graph}.onnx"), load_external_data=False)
    # another model-local function (not of the plugin domain) must survive
    other = helper.make_function("other.domain", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                                 [helper.make_opsetid("", 20)])
    original.functions.append(other)
    onnx.save(original, str(tmp_path / f"{graph}.onnx"))
    assert [f.domain for f in original.functions].count("dysink") == 1

    blob = trt_onnx.function_free_bytes(tmp_path / f"{graph}.onnx")
    stripped = onnx.load_from_string(blob)
    with monkeypatch.context() as m:      # the checker resolves external data relative to the working directory
        m.chdir(tmp_path)
        onnx.checker.check_model(stripped)
    assert [(f.domain, f.name) for f in stripped.functions] == [("other.domain", "Twice")]
    assert _custom_nodes(stripped) == _custom_nodes(original) and len(_custom_nodes(stripped)) >= 1
    assert {n.op_type for n in stripped.graph.node if n.domain == "dysink"} == {PLUGIN_GRAPHS[graph]}
    assert stripped.graph.SerializeToString() == original.graph.SerializeToString()   # nodes, weights refs, I/O
    assert list(stripped.opset_import) == list(original.opset_import)
    # retrieve has no weights (nothing external); dit_step's move to the data file
    assert trt_onnx.external_data_locations(stripped) == ([data.name] if original.graph.initializer else [])
    # the weights resolve relative to the original file's folder, as the parser's `path` makes them
    onnx.load_external_data_for_model(stripped, str(tmp_path))
    full = onnx.load(str(tmp_path / f"{graph}.onnx"))
    for a, b in zip(stripped.graph.initializer, full.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def _run(*args):
    return CliRunner().invoke(export_main, ["trt-onnx", *map(str, args)])


def test_trt_onnx_writes_function_free_files_with_linked_data(bundle_copy, tmp_path):
    data = _externalize_in_bundle(bundle_copy, "dit_step")
    out = tmp_path / "trt"
    res = _run("--bundle", bundle_copy, "--out", out)
    assert res.exit_code == 0, res.output
    for name, entry in json.loads((out / trt_onnx.MARKER).read_text())["graphs"].items():
        model = onnx.load(str(out / entry["file"]), load_external_data=False)
        assert not [f for f in model.functions if f.domain == "dysink"], name
        assert entry["removed_functions"] == ([f"dysink::{PLUGIN_GRAPHS[name]}"] if name in PLUGIN_GRAPHS else [])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{g}.onnx" for g in json.loads((bundle_copy / "bundle.json").read_text())["graphs"]]
        + [data.name, trt_onnx.MARKER])
    # TensorRT's parser reads DIR/<location>: a symbolic link to the bundle's file
    assert (out / data.name).is_symlink() and (out / data.name).resolve() == data.resolve()
    model = onnx.load(str(out / "dit_step.onnx"), load_external_data=False)
    assert trt_onnx.external_data_locations(model) == [data.name]
    # the bundle's own file keeps one link: the onnx package still loads and checks the bundle's graph
    assert os.stat(data).st_nlink == 1
    onnx.checker.check_model(str(bundle_copy / "dit_step.onnx"), full_check=True)
    assert f"wrote {out / 'dit_step.onnx'} (functions removed: dysink::GatedSinkAttention; external data linked: " \
           f"{data.name})" in res.output
    lib = bundle_copy / "plugins" / "libdysink_plugins.so"
    assert f"trtexec --onnx={out / 'dit_step.onnx'} --dynamicPlugins={lib} --stronglyTyped " \
           f"--saveEngine={out / 'dit_step.engine'}" in res.output
    assert f"polygraphy inspect model {out / 'dit_step.onnx'} --display-as=trt" in res.output
    assert res.output.strip().splitlines()[-1].startswith("DONE")
    assert not list(tmp_path.glob(".trt.partial-*"))


def test_trt_onnx_copy_data_makes_a_directory_onnx_loads(bundle_copy, tmp_path):
    data = _externalize_in_bundle(bundle_copy, "dit_step")
    out = tmp_path / "trt"
    res = _run("--bundle", bundle_copy, "--out", out, "--graph", "dit_step", "--copy-data")
    assert res.exit_code == 0, res.output
    assert "external data copied: dit_step.onnx.data" in res.output
    copied = out / data.name
    assert not copied.is_symlink() and copied.read_bytes() == data.read_bytes()
    onnx.checker.check_model(str(out / "dit_step.onnx"), full_check=True)   # by path: external data resolves
    stripped = onnx.load(str(out / "dit_step.onnx"))
    assert not stripped.functions and len(stripped.graph.initializer) > 0


def test_trt_onnx_copies_where_it_cannot_link(bundle_copy, tmp_path, monkeypatch):
    data = _externalize_in_bundle(bundle_copy, "dit_step")

    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")       # exFAT / vfat

    monkeypatch.setattr(trt_onnx.os, "symlink", no_link)
    written = trt_onnx.write_trt_onnx(bundle_copy, tmp_path / "trt", ["dit_step"])
    assert [w.name for w in written] == ["dit_step"] and written[0].placed == {data.name: "copied"}
    copied = tmp_path / "trt" / data.name
    assert copied.read_bytes() == data.read_bytes() and not copied.is_symlink()


def test_trt_onnx_overwrite_replaces_only_its_own_output(bundle_copy, tmp_path):
    out = tmp_path / "trt"
    assert _run("--bundle", bundle_copy, "--out", out).exit_code == 0
    res = _run("--bundle", bundle_copy, "--out", out, "--graph", "retrieve", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["retrieve.onnx", trt_onnx.MARKER])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    res = _run("--bundle", bundle_copy, "--out", foreign, "--overwrite")
    assert res.exit_code == 2 and "was not written by dysink-export trt-onnx" in res.output
    assert len(res.output.strip().splitlines()) == 1 and (foreign / "keep.txt").read_text() == "x"


def test_trt_onnx_leaves_nothing_when_it_fails(bundle_copy, tmp_path, monkeypatch):
    calls = []

    def failing(model):
        calls.append(model)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return model

    monkeypatch.setattr(trt_onnx, "strip_plugin_functions", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        trt_onnx.write_trt_onnx(bundle_copy, tmp_path / "trt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("case, message", [
    ("missing bundle", "does not exist"),
    ("existing out", "already exists; pass --overwrite or choose another --out"),
    ("unknown graph", "--graph nope: not in bundle"),
    ("out is the bundle", "is the bundle or a folder above it"),
])
def test_trt_onnx_bad_input_is_one_line(bundles, tmp_path, case, message):
    bundle = bundles("fp32")
    out = tmp_path / "trt"
    args = ["--bundle", bundle, "--out", out]
    if case == "missing bundle":
        args[1] = tmp_path / "nope"
    elif case == "existing out":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    elif case == "unknown graph":
        args += ["--graph", "nope"]
    else:
        args = ["--bundle", bundle, "--out", bundle, "--overwrite"]
    res = _run(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert "Traceback" not in res.output
    if case == "existing out":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    elif case != "out is the bundle":
        assert not out.exists()


def test_missing_external_data_is_refused(bundle_copy, tmp_path):
    """A graph whose external data file is gone (not listed in the manifest, so Bundle.load cannot see it)."""
    _externalize(bundle_copy, "dit_step", data_name="elsewhere.bin")
    path = bundle_copy / "dit_step.onnx"
    edit_manifest(bundle_copy, lambda m: m["graphs"]["dit_step"].update(sha256=sha256_file(path),
                                                                        bytes=path.stat().st_size))
    (bundle_copy / "elsewhere.bin").unlink()
    with pytest.raises(DysinkError, match="references external data 'elsewhere.bin', which is not in bundle"):
        trt_onnx.write_trt_onnx(bundle_copy, tmp_path / "trt", ["dit_step"])
    assert not (tmp_path / "trt").exists()


@pytest.mark.parametrize("graph", ["dit_step", "retrieve"])
def test_native_graphs_are_the_function_bodies_inlined(bundles, graph):
    """build --no-plugins hands TensorRT the graph with every dysink node replaced by its function
    body: standard ops only, and ONNX Runtime computes the same outputs from it as from the bundle's
    graph (which it runs through the same bodies)."""
    import onnxruntime as ort

    from dysink_deploy.bundle import Bundle
    from dysink_deploy.export.graph_modules import sample_inputs

    bundle = Bundle.load(bundles("fp32"))
    path = bundle.graph_path(graph)
    native = onnx.load_from_string(trt_onnx.native_bytes(path))
    assert not native.functions and not _custom_nodes(native)
    onnx.checker.check_model(native, full_check=True)
    spec = bundle.specs[graph]
    feeds = {s.name: x.numpy() for s, x in zip(spec.inputs, sample_inputs(graph, bundle.model, bundle.stream,
                                                                        "fp32", seed=0))}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    want = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(native.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)
