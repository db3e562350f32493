"""The C++ embedding example and its inputs: `dysink-run --dump-block` saves what the dit_step graph
takes (replayed here through ONNX Runtime: same x0), and main.cpp compiles against each TensorRT
header version found (it needs TensorRT and a GPU to run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dysink_deploy.bundle import Bundle

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins" / "examples" / "embed" / "main.cpp"


def test_dump_block_replays_through_the_dit_step_graph(bundles, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    bundle = Bundle.load(bundles("fp32"))
    dump = tmp_path / "dump"
    res = subprocess.run([sys.executable, "-m", "dysink_deploy.runtime.cli", "--quiet", "--model", "tiny",
                          "--blocks", "2", "--dedup-threshold", "0.985", "--out", str(tmp_path / "out"),
                          "--dump-block", "1", str(dump)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    meta = json.loads((dump / "meta.json").read_text())
    assert meta["block"] == 1 and meta["steps"] == len(bundle.stream.timesteps())
    sess = ort.InferenceSession(str(bundle.graph_path("dit_step")), providers=["CPUExecutionProvider"])
    spec = bundle.specs["dit_step"]
    for step in range(meta["steps"]):
        d = dump / f"step{step}"
        feeds = {t.name: np.load(d / f"{t.name}.npy") for t in spec.inputs}
        for t in spec.inputs:
            assert feeds[t.name].shape == t.shape and str(feeds[t.name].dtype) == t.dtype, t.name
        x0 = sess.run(["x0"], feeds)[0]
        want = np.load(d / "x0.npy")
        np.testing.assert_allclose(x0, want, atol=1e-4 * max(1.0, np.abs(want).max()))
    # Refusals: a block past the run, a non-empty directory.
    bad = subprocess.run([sys.executable, "-m", "dysink_deploy.runtime.cli", "--quiet", "--model", "tiny",
                          "--blocks", "2", "--out", str(tmp_path / "o2"), "--dump-block", "1", str(dump)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not empty" in bad.stderr


def _header_dirs() -> list[Path]:
    listed = os.environ.get("DYSINK_TRT_INCLUDE_DIRS", "") or os.environ.get("TensorRT_INCLUDE_DIR", "")
    return [Path(p) for p in listed.split(os.pathsep) if p and (Path(p) / "NvInferRuntime.h").is_file()]


HEADERS = _header_dirs()
JSON_HEADER = Path("/usr/include/nlohmann/json.hpp")


@pytest.mark.skipif(not HEADERS, reason="no TensorRT headers: set DYSINK_TRT_INCLUDE_DIRS to compile-check the example")
@pytest.mark.skipif(not JSON_HEADER.is_file(), reason="nlohmann-json is not installed (Debian: nlohmann-json3-dev)")
@pytest.mark.skipif(not shutil.which("g++"), reason="no C++ compiler")
@pytest.mark.parametrize("include", HEADERS, ids=[h.parent.name for h in HEADERS])
def test_example_compiles(include):
    cuda = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    res = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-isystem", str(include),
                          "-isystem", str(cuda), str(EXAMPLE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_example_checks_every_tensorrt_object_it_creates():
    """createInferRuntime, deserializeCudaEngine and createExecutionContext return null on failure: the
    example checks each and exits with one line naming the call (it cannot run here: TensorRT + GPU)."""
    text = EXAMPLE.read_text()
    for call, var in (("createInferRuntime", "runtime"), ("deserializeCudaEngine", "engine"),
                      ("createExecutionContext", "context")):
        after = text.split(f"{call}(", 1)[1]
        assert f"if (!{var})" in after.split(";", 2)[1], call            # checked right after the call
        assert f'"{call} failed' in after, call                           # ... with a line naming it
