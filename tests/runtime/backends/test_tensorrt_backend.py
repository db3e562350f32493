"""The tensorrt backend's set-up with TensorRT and cuda-python stand-ins (tests/tensorrt_standin.py):
the plugin library found inside the bundle from any working directory, loaded once per process,
engines checked against the bundle's contract, native engines (build --no-plugins) without a
library, uploads staged in pinned memory. Nothing here runs an engine: that needs TensorRT and a
GPU (`make gpu-check`)."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.export import trt_build as tb  # noqa: E402
from dysink_deploy.runtime.backends import cuda as cuda_mod  # noqa: E402
from dysink_deploy.runtime.backends import plugin_library  # noqa: E402
from dysink_deploy.runtime.backends import tensorrt_backend as trb  # noqa: E402
from tests.tensorrt_standin import FakeCudaRuntime, FakeTensorRT  # noqa: E402


@pytest.fixture
def standins(monkeypatch, bundle_copy):
    """(fake tensorrt, fake cuda runtime), installed; a fresh per-process library cache."""
    trt = FakeTensorRT(specs=Bundle.load(bundle_copy).specs)
    rt = FakeCudaRuntime()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tb, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(tb, "compute_capability", lambda: "sm_87")
    monkeypatch.setattr(trb, "compute_capability", lambda: "sm_87")
    monkeypatch.setattr(cuda_mod, "_cudart", lambda: rt)
    monkeypatch.setattr(plugin_library, "_loaded", {})
    return trt, rt


@pytest.fixture
def library(tmp_path):
    lib = tmp_path / "elsewhere" / "libdysink_plugins.so"
    lib.parent.mkdir()
    lib.write_bytes(b"a plugin library")
    return lib


def test_the_manifest_records_the_library_inside_the_bundle(standins, bundle_copy, library, tmp_path):
    trt, _ = standins
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "built"), plugins=str(library))
    engines = json.loads((out / "bundle.json").read_text())["engines"]
    records = {e["plugin_library"]["file"] for e in engines.values()}
    assert records == {"plugins/libdysink_plugins.so"}                  # relative to the bundle
    assert (out / "plugins" / "libdysink_plugins.so").read_bytes() == library.read_bytes()
    assert trt.loaded_libraries == [str((out / "plugins" / "libdysink_plugins.so").resolve())]
    assert all(e["build_options"]["plugins"] for e in engines.values())


def test_the_backend_loads_from_another_directory_once_per_process(standins, bundle_copy, library, tmp_path,
                                                                    monkeypatch):
    trt, rt = standins
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "built"), plugins=str(library))
    plugin_library._loaded.clear()                  # a new process: the build's load is not this one's
    trt.loaded_libraries.clear()
    elsewhere = tmp_path / "some" / "other" / "cwd"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    bundle = Bundle.load(out)
    first = trb.TensorRTBackend(bundle)
    second = trb.TensorRTBackend(bundle)              # a second stream in the same process
    assert trt.loaded_libraries == [str((out / "plugins" / "libdysink_plugins.so").resolve())]
    assert set(first.contexts) == set(bundle.graphs) == set(second.contexts)
    first.close()
    second.close()


def test_a_changed_library_is_refused(standins, bundle_copy, library, tmp_path):
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "built"), plugins=str(library))
    (out / "plugins" / "libdysink_plugins.so").write_bytes(b"another library")
    with pytest.raises(DysinkError, match="plugin library the engine .* is missing or changed"):
        trb.TensorRTBackend(Bundle.load(out))


def test_an_engine_that_breaks_the_contract_is_one_line(standins, bundle_copy, library, tmp_path):
    trt, _ = standins
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "built"), plugins=str(library))
    trt.io_overrides = {"retrieve": {"query_valid": (True, "BOOL", (trt.specs["retrieve"].input("query_valid").shape))}}
    want = trt.specs["retrieve"].input("query_valid").dtype
    if want == "bool":
        trt.io_overrides["retrieve"]["query_valid"] = (True, "INT32", trt.io_overrides["retrieve"]["query_valid"][2])
    with pytest.raises(DysinkError) as info:
        trb.TensorRTBackend(Bundle.load(out))
    assert "engine retrieve does not match the bundle's contract: query_valid is" in str(info.value)
    assert f"the contract has {want}" in str(info.value) and "\n" not in str(info.value)
    trt.io_overrides = {"dit_step": {"x_t": (True, "FLOAT", (1, 2, 3))}}
    with pytest.raises(DysinkError, match=r"x_t has shape \[1, 2, 3\], the contract has"):
        trb.TensorRTBackend(Bundle.load(out))


def test_uploads_go_through_pinned_staging(standins, bundle_copy, library, tmp_path):
    """A copy from pageable memory makes the host wait: every upload is copied into a pinned buffer
    of its destination first, and that buffer is reused only after its last copy's event."""
    import ctypes

    import numpy as np

    _, rt = standins
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "built"), plugins=str(library))
    backend = trb.TensorRTBackend(Bundle.load(out))
    cuda = backend.cuda
    before = dict(rt.calls)
    data = np.arange(12, dtype=np.float32)
    cuda.upload(4096, data)
    cuda.upload(4096, data + 1)                       # same destination: same staging buffer
    new = {k: rt.calls.get(k, 0) - before.get(k, 0) for k in rt.calls}
    assert new["cudaMallocHost"] == 1 and new["cudaMemcpyAsync"] == 2 and new["cudaEventRecord"] == 2
    assert new["cudaEventSynchronize"] == 1           # the second upload waited for the first copy
    host, nbytes, _ = cuda.staging[4096]
    staged = np.frombuffer((ctypes.c_char * nbytes).from_address(host), dtype=np.float32)
    assert nbytes == data.nbytes and staged.tolist() == (data + 1).tolist()
    cuda.upload(4096, np.arange(24, dtype=np.float32))   # larger: a new buffer, the old one freed
    assert cuda.staging[4096][1] == 96
    backend.close()
    assert rt.calls["cudaFreeHost"] == rt.calls["cudaMallocHost"]
    assert rt.calls["cudaEventDestroy"] == rt.calls["cudaEventCreateWithFlags"]


def test_native_engines_need_no_plugin_library(standins, bundle_copy, tmp_path):
    import onnx

    trt, _ = standins
    out = tb.build_engines(str(bundle_copy), out=str(tmp_path / "native"), native=True)
    for blob, path in trt.parsed:
        model = onnx.load_from_string(blob)
        assert not model.functions and all(n.domain != "dysink" for n in model.graph.node), path
    engines = json.loads((out / "bundle.json").read_text())["engines"]
    assert all(e["plugin_library"] is None and not e["build_options"]["plugins"] for e in engines.values())
    trt.loaded_libraries.clear()
    backend = trb.TensorRTBackend(Bundle.load(out))
    assert trt.loaded_libraries == []
    backend.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"hardware_compat": True}, "--hardware-compat needs --no-plugins"),
    ({"native": True, "plugins": "x.so"}, "--plugins and --no-plugins exclude each other"),
])
def test_build_option_conflicts(standins, bundle_copy, kwargs, message):
    with pytest.raises(DysinkError, match=message):
        tb.build_engines(str(bundle_copy), **kwargs)


def test_native_engines_may_be_hardware_compatible(standins, bundle_copy, tmp_path):
    trt, _ = standins
    tb.build_engines(str(bundle_copy), out=str(tmp_path / "hc"), native=True, hardware_compat=True)
    assert trt.hardware_compat_levels and set(trt.hardware_compat_levels) == {"ampere+"}
