"""`dysink-export build` and the engine manifest, without TensorRT: arguments, refusals, manifest
records; the TensorRT Python names the code uses exist in both 10.3 and 11.x bindings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dysink_deploy.bundle import Bundle
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.errors import DysinkError
from dysink_deploy.export import trt_build as tb
from tests.tensorrt_standin import FakeTensorRT

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ROOT / "runtime" / "backends"
SOURCES = [ROOT / "export" / "trt_build.py", BACKENDS / "tensorrt_backend.py", BACKENDS / "tensorrt_ops.py",
           BACKENDS / "engine_checks.py", BACKENDS / "plugin_library.py"]

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT message cannot be shown")
def test_without_tensorrt_one_line_says_how_to_get_it(bundles):
    res = CliRunner().invoke(export_main, ["build", "--bundle", str(bundles("fp32"))])
    assert res.exit_code == 2
    assert "TensorRT's Python package is not installed" in res.output and "JetPack" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["--opt-level", "7"], "--opt-level must lie in 0..5"),
    (["--workspace", "0"], "--workspace must be > 0 GB"),
    (["--graph", "nope"], "--graph nope: not in bundle"),
])
def test_bad_build_options(bundles, args, message):
    res = CliRunner().invoke(export_main, ["build", "--bundle", str(bundles("fp32")), *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_missing_plugin_library_names_the_command(bundles):
    bundle = Bundle.load(bundles("fp32"))
    with pytest.raises(DysinkError, match="dysink-export plugins --bundle"):
        tb.find_plugin_library(bundle, None)


@pytest.fixture
def bundle_with_engine(bundles, tmp_path):
    import shutil

    path = tmp_path / "b"
    shutil.copytree(bundles("fp32"), path)
    (path / "retrieve.engine").write_bytes(b"serialized engine bytes")
    lib = path / "plugins" / "libdysink_plugins.so"      # kept inside the bundle, recorded relative to it
    lib.parent.mkdir()
    lib.write_bytes(b"library bytes")
    tb.record_engines(path, {"retrieve": {"file": "retrieve.engine", "tensorrt_version": "10.3.0",
                                          "compute_capability": "sm_87",
                                          "plugin_library": {"file": "plugins/libdysink_plugins.so",
                                                             "sha256": tb.sha256_file(lib)},
                                          "build_options": {"strongly_typed": True}}})
    return path, lib


def test_engine_records_and_refusals(bundle_with_engine):
    path, lib = bundle_with_engine
    manifest = json.loads((path / "bundle.json").read_text())
    entry = manifest["engines"]["retrieve"]
    assert entry["bytes"] == len(b"serialized engine bytes") and len(entry["sha256"]) == 64
    bundle = Bundle.load(path)              # the ONNX bundle still loads with engines recorded
    assert tb.check_engine_entry(bundle, "retrieve", "10.3.0", "sm_87")["file"] == "retrieve.engine"
    with pytest.raises(DysinkError, match="built by TensorRT 10.3.0, this is TensorRT 11.1.0"):
        tb.check_engine_entry(bundle, "retrieve", "11.1.0", "sm_87")
    with pytest.raises(DysinkError, match="built for sm_87, this GPU is sm_90"):
        tb.check_engine_entry(bundle, "retrieve", "10.3.0", "sm_90")
    with pytest.raises(DysinkError, match="no engine for dit_step"):
        tb.check_engine_entry(bundle, "dit_step", "10.3.0", "sm_87")
    lib.write_bytes(b"another library")
    with pytest.raises(DysinkError, match="plugin library the engine retrieve.engine was built with"):
        tb.check_engine_entry(bundle, "retrieve", "10.3.0", "sm_87")
    (path / "retrieve.engine").write_bytes(b"tampered")
    with pytest.raises(DysinkError, match="does not match its sha256"):
        tb.check_engine_entry(bundle, "retrieve", "10.3.0", "sm_87")


def test_an_outside_plugin_path_in_the_manifest_is_refused(bundle_with_engine):
    """Manifests of earlier builds named the library by a path relative to the build's working
    directory (or absolute): refused in one line with the rebuild command."""
    from tests.conftest import edit_manifest

    path, lib = bundle_with_engine
    for where in (str(lib), "../libdysink_plugins.so"):
        edit_manifest(path, lambda m: m["engines"]["retrieve"]["plugin_library"].update(file=where))
        with pytest.raises(DysinkError, match="not a plain path inside the bundle; rebuild it: dysink-export build"):
            tb.check_engine_entry(Bundle.load(path), "retrieve", "10.3.0", "sm_87")


def test_tensorrt_names_exist_in_10_3_and_11():
    data = json.loads((ROOT / "export" / "data" / "trt_python_api.json").read_text())["present"]
    assert all(all(v.values()) for v in data.values()), {n: v for n, v in data.items() if not all(v.values())}
    used = set()
    for src in SOURCES:
        if src.exists():
            text = src.read_text()
            used |= set(re.findall(r"\btrt\.([A-Za-z_][A-Za-z0-9_]*)", text))
            used |= set(re.findall(r"\btrt\.[A-Za-z_][A-Za-z0-9_]*\.([A-Za-z_][A-Za-z0-9_]*)", text))
            used |= set(re.findall(r"\bparser\.([A-Za-z_][A-Za-z0-9_]*)", text))     # OnnxParser methods
            used |= set(re.findall(r"\bengine\.([A-Za-z_][A-Za-z0-9_]*)", text))     # ICudaEngine methods
            used |= set(re.findall(r"\bregistry\.([A-Za-z_][A-Za-z0-9_]*)", text))   # IPluginRegistry methods
            assert "BuilderFlag" not in text, "strongly typed networks: no precision builder flags (gone in 11)"
            assert not re.search(r"\bdevice_memory_size\b", text), "device_memory_size is gone in 11; use _v2"
    used -= {"__version__"}           # defined by the Python package, not the bindings
    assert used <= set(data), f"add to export/data/trt_python_api.json and check: {sorted(used - set(data))}"


def test_build_parses_graphs_without_their_dysink_functions(bundles, tmp_path, monkeypatch):
    """TensorRT <= 10.6 imports a node as the model-local function of its name: the parser gets the
    graph without the dysink functions, with the file's path (external weights resolve beside it)."""
    import onnx

    fake = FakeTensorRT()
    monkeypatch.setattr(tb, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(tb, "compute_capability", lambda: "sm_87")
    lib = tmp_path / "libdysink_plugins.so"
    lib.write_bytes(b"library")
    src = bundles("fp32")
    out = tb.build_engines(str(src), out=str(tmp_path / "built"), graphs=["dit_step", "retrieve"], plugins=str(lib))
    assert [Path(p).name for _, p in fake.parsed] == ["dit_step.onnx", "retrieve.onnx"]
    for (blob, path), op in zip(fake.parsed, ["GatedSinkAttention", "RetrieveSinks"]):
        assert Path(path) == src / Path(path).name
        model = onnx.load_from_string(blob)
        original = onnx.load(path, load_external_data=False)
        assert not model.functions and [f.name for f in original.functions] == [op]
        assert model.graph.SerializeToString() == original.graph.SerializeToString()
    manifest = json.loads((out / "bundle.json").read_text())
    assert set(manifest["engines"]) == {"dit_step", "retrieve"}


def test_build_out_copies_external_data(bundle_copy, tmp_path):
    """Hard-linked external data would make the onnx package refuse both bundles' graphs."""
    import onnx

    from dysink_deploy.bundle import sha256_file
    from tests.export.conftest import edit_manifest

    path = bundle_copy / "dit_step.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location="dit_step.onnx.data")
    data = bundle_copy / "dit_step.onnx.data"
    edit_manifest(bundle_copy, lambda m: m["graphs"]["dit_step"].update(
        sha256=sha256_file(path), bytes=path.stat().st_size,
        external_data=[{"file": data.name, "sha256": sha256_file(data), "bytes": data.stat().st_size}]))
    names = {d["file"] for g in Bundle.load(bundle_copy).graphs.values() for d in g.external_data}
    tb._copy_bundle(bundle_copy, tmp_path / "new", names)
    assert os.stat(data).st_nlink == 1 and os.stat(bundle_copy / "retrieve.onnx").st_nlink == 2
    for root in (bundle_copy, tmp_path / "new"):
        onnx.checker.check_model(str(root / "dit_step.onnx"), full_check=True)
    Bundle.load(tmp_path / "new")
