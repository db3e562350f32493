"""libdysink_plugins.so, host side: built against each TensorRT header version found, then the C++
harness (tests/plugins/cpp/plugin_harness.cpp) dlopens it on this CPU-only machine and creates each
plugin from the attributes of the custom nodes of a real exported tiny bundle.

Headers are never committed. Point the tests at them with
    DYSINK_TRT_INCLUDE_DIRS=/path/TensorRT-10.3/include:/path/TensorRT-11.1/include
(or TensorRT_INCLUDE_DIR for one version); without any, the C++ tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dysink_deploy.errors import DysinkError
from dysink_deploy.plugins import build as B

HARNESS = Path(__file__).parent / "cpp" / "plugin_harness.cpp"


def _header_dirs() -> list[Path]:
    listed = os.environ.get("DYSINK_TRT_INCLUDE_DIRS", "")
    dirs = [Path(p) for p in listed.split(os.pathsep) if p]
    single = B.find_tensorrt_include() if not dirs and os.environ.get("TensorRT_INCLUDE_DIR") else None
    if single:
        dirs.append(single)
    return [d for d in dirs if (d / "NvInferRuntime.h").is_file()]


HEADERS = _header_dirs()
NO_HEADERS = ("no TensorRT headers: set DYSINK_TRT_INCLUDE_DIRS (or TensorRT_INCLUDE_DIR) to build and test the "
              "plugin library")
TOOLS = shutil.which("cmake") and shutil.which("c++")


@pytest.fixture(scope="module")
def node_attributes(bundles):
    """threshold / sink_kv_bf16 / fixed_sinks and sink_size / k, read from the bundle's ONNX nodes."""
    import onnx
    from onnx import helper

    from dysink_deploy.bundle import Bundle

    bundle = Bundle.load(bundles("fp16"))
    attrs = {}
    for graph, op in (("dit_step", "GatedSinkAttention"), ("retrieve", "RetrieveSinks")):
        model = onnx.load(str(bundle.graph_path(graph)), load_external_data=False)
        node = next(n for n in model.graph.node if n.op_type == op and n.domain == "dysink")
        attrs[op] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    from dysink_deploy.config import model_preset
    from dysink_deploy.plugins import aot

    model = model_preset("tiny")
    return aot.compile_kernels(model, model.default_stream(), ["fp16"], [87], tmp_path_factory.mktemp("k") / "kernels")


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
@pytest.mark.parametrize("include", HEADERS, ids=[B.tensorrt_header_version(h) for h in HEADERS])
def test_harness_against_headers(include, kernel_dir, node_attributes, tmp_path):
    lib = B.build_library(kernel_dir, tmp_path / "build", include, harness_source=HARNESS)
    gsa, rs = node_attributes["GatedSinkAttention"], node_attributes["RetrieveSinks"]
    assert gsa["plugin_namespace"] == b"dysink" and gsa["plugin_version"] == b"1"
    # Symbols: only the entry points are exported, and nothing from TensorRT or CUDA is needed.
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert {"getCreators", "setLoggerFinder"} <= {line.split()[-1] for line in nm.splitlines()}
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in needed and "libcuda" not in needed and "cudart" not in needed, needed
    res = subprocess.run([str(tmp_path / "build" / "plugin_harness"), str(lib), repr(gsa["threshold"]),
                          str(gsa["sink_kv_bf16"]), str(gsa["fixed_sinks"]), str(rs["sink_size"]), str(rs["k"]), "87"],
                         capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    failed = [line for line in res.stdout.splitlines() if line.startswith("FAIL")]
    assert res.returncode == 0 and not failed, "\n".join(failed) or res.stderr
    assert res.stdout.rstrip().endswith("0 failures")


def test_missing_headers_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TensorRT_ROOT", raising=False)
    monkeypatch.setenv("TensorRT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(DysinkError, match="no NvInferRuntime.h in"):
        B.find_tensorrt_include()


def test_embedded_source_names_every_cubin(kernel_dir):
    from dysink_deploy.plugins.embed import embedded_source

    text = embedded_source(kernel_dir)
    import json
    n = len(json.loads((kernel_dir / "kernels.json").read_text())["kernels"])
    assert text.count(".incbin") == n and f"kNumKernelImages = {n};" in text
    assert '"paged_attention", 87, 1, 32, 0, 1,' in text          # float16, head dim 32, sink rounding on
