"""The kit's stages on the CPU, where they can run: stage c's comparison with a CPU run standing in
for the CUDA one, stage d's measurement on the tiny model (2 blocks), stage a's result handling with
a stand-in for the GPU check, stage b's reasons to skip, the report writer. What needs a GPU is in
docs/gpu-check.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from dysink_deploy.config import StreamConfig
from dysink_deploy.exitcodes import SKIPPED as EXIT_SKIPPED
from dysink_deploy.gpukit import fullsize_stage, harness_stage, kernels_stage, kit as K, report, stream_stage
from dysink_deploy.gpukit.result import StageResult
from dysink_deploy.plugins import gpu_check


@pytest.fixture(scope="module")
def stream_kit(tmp_path_factory):
    """A kit holding only a 2-block CPU reference stream (what --prepare --stream-blocks 2 writes)."""
    kit = tmp_path_factory.mktemp("kit")
    data = stream_stage.reference_run(2)
    (kit / K.STREAM_REFERENCE).parent.mkdir(parents=True)
    (kit / K.STREAM_REFERENCE).write_text(json.dumps(data))
    K.write_manifest(kit, {"stream_reference": {"blocks": 2}}, [90])
    return kit


def test_stage_c_same_decisions_and_a_difference_found(stream_kit, tmp_path):
    result = StageResult("stream", out=str(tmp_path))
    stream_stage.run(stream_kit, tmp_path, lambda m: None, result, device="cpu", kernels=["reference"])
    assert result.status == "PASSED", result
    assert result.rows[0]["decisions"] == "identical" and result.rows[0]["blocks"] == 2
    saved = json.loads((tmp_path / "stage-stream.json").read_text())
    assert saved["status"] == "PASSED"

    reference = json.loads((stream_kit / K.STREAM_REFERENCE).read_text())
    tampered = [dict(b) for b in reference["blocks"]]
    tampered[1]["bank_size"] += 1
    cmp = stream_stage.compare(reference, tampered)
    assert not cmp["same"] and cmp["first"]["block"] == 1 and cmp["first"]["fields"] == ["bank_size"]
    assert not stream_stage.compare(reference, tampered[:1])["same"]        # a missing block differs too


def test_stage_d_measures_the_tiny_model_on_the_cpu():
    configs = [("DySink, reference ops", {"kernels": "reference"}, {}, False),
               ("no memory", {"kernels": "reference"}, fullsize_stage.LONGLIVE, True)]
    result = StageResult("fullsize")
    fullsize_stage.run_configs(result, "cpu", "tiny", configs=configs, warmup=1, timed=1, precision="fp32",
                               log=lambda m: None)
    dysink, longlive = result.rows
    for row in result.rows:
        assert row["result"] == "PASSED", row
        assert row["frames/s"] > 0 and row["blocks"] == 1 and row["peak GiB"] is None     # no device memory here
        assert {"denoise ms", "clean_pass ms", "decode ms", "feature ms", "total ms"} <= set(row)
    assert (dysink["top_k"], dysink["sink_size"], longlive["top_k"], longlive["sink_size"]) == (2, 0, 0, 3)
    assert longlive["feature ms"] < dysink["feature ms"]       # the features hook skips decode + encoder


def test_stage_d_configurations():
    names = [c[0] for c in fullsize_stage.CONFIGS]
    assert len(names) == 6 and sum(c[1].get("cuda_graph", False) for c in fullsize_stage.CONFIGS) == 3
    cfg = StreamConfig(**fullsize_stage.LONGLIVE)
    # LongLive: one fixed sink block, the same 2 past local blocks as DySink's window once its bank
    # holds top_k entries, no retrieval.
    dysink = StreamConfig()
    assert cfg.fixed_sink_pages == 1 and cfg.top_k == 0 and cfg.window_frames(1) == cfg.local_attn_size
    assert (cfg.local_attn_size - cfg.sink_size) // cfg.block_frames - 1 == dysink.window_frames(16) // 3 - 1 == 2
    result = StageResult("fullsize")
    fullsize_stage.run_configs(result, "cpu", "tiny", configs=fullsize_stage.CONFIGS[:2], deadline=time.monotonic(),
                               log=lambda m: None)
    assert [r["result"] for r in result.rows] == ["NOT RUN", "NOT RUN"]    # past the deadline: not started


def _collected(ok: bool = True) -> dict:
    case = {"case": "tiny fp32", "ok": ok, "status": "PASSED" if ok else "FAILED", "shape": "72 tokens",
            "detail": "max err 1e-7"}
    timing = {"case": "1.3B bf16", "op_ms": 1.2, "gate_ms": 0.05, "attn_ms": 1.15, "sdpa_ms": 1.0, "keys": 23400,
              "vs_sdpa": 1.2, "gate_share": 0.043}
    return {"device": "stand-in", "sm": "sm_90", "torch": "x", "triton": "y", "host": "h", "date": "d",
            "cases": [case], "timings": [timing], "retrieve_ms": 0.05, "ok": ok}


@pytest.mark.parametrize("ok", [True, False])
def test_stage_a_keeps_the_gpu_checks_numbers(tmp_path, monkeypatch, ok):
    monkeypatch.setattr(gpu_check, "skip_reason", lambda: None)
    result = StageResult("kernels", out=str(tmp_path))
    kernels_stage.run(tmp_path, tmp_path, lambda m: None, result, collect=lambda log: _collected(ok))
    assert result.status == ("PASSED" if ok else "FAILED")
    assert result.numbers["timings"][0]["vs_sdpa"] == 1.2 and len(result.rows) == 3
    lines = gpu_check.format_lines(_collected(ok))
    assert any("1.20x SDPA" in ln for ln in lines) and lines[-1].startswith("PASSED" if ok else "FAILED")


def test_stage_b_says_why_it_skips(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    K.write_manifest(kit, {}, [90])
    got = harness_stage.run_plugin_harness(kit, tmp_path / "out", lambda m: None)
    assert got["status"] == "SKIPPED" and "--tensorrt-include" in got["detail"]
    assert harness_stage.arch_mismatch(kit, "sm_90") is None
    assert "prepare the kit with --arch 89" in harness_stage.arch_mismatch(kit, "sm_89")
    assert harness_stage.arch_mismatch(kit, None) is None


def test_the_report_writer(tmp_path):
    good = StageResult("kernels", "Triton kernels", "PASSED", "ok", 1.25, {"x": float("nan")},
                       [{"check": "a|b", "ms": 0.123456, "nested": [1, 2]}], ["a note"])
    manifest = {"created": "today", "archs": [90], "size_bytes": 3 << 20, "source": {"commit": "abc", "dirty": True}}
    report.write(tmp_path, {"gpu": "stand-in", "versions": {"torch": "2.11"}}, manifest, [good], "PASSED | 1 of 1",
                 540, 12.0)
    data = json.loads((tmp_path / report.JSON).read_text())
    assert data["stages"][0]["numbers"]["x"] is None and data["kit"]["archs"] == [90]
    md = (tmp_path / report.MARKDOWN).read_text()
    assert "**PASSED | 1 of 1**" in md and "| a\\|b | 0.1235 | [1, 2] |" in md and "(uncommitted changes)" in md
    assert "- a note" in md and not math.isnan(data["elapsed_s"])


def test_one_stage_alone_without_a_gpu_exits_77(stream_kit, tmp_path):
    res = subprocess.run([sys.executable, "-m", "dysink_deploy.gpukit", "c", "--kit", str(stream_kit),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    if res.returncode != EXIT_SKIPPED and "no CUDA GPU" not in res.stdout:
        pytest.skip("a GPU is present")
    assert res.returncode == EXIT_SKIPPED, res.stdout + res.stderr
    assert json.loads((tmp_path / "stage-stream.json").read_text())["status"] == "SKIPPED"


BLOCKER = """
import sys
MISSING = {"av", "tensorrt", "polygraphy", "ftfy", "tritonclient", "pycuda"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ImportError(f"{name} is not installed on the lent GPU machine")
sys.meta_path.insert(0, Block())
import dysink_deploy.gpukit.__main__, dysink_deploy.gpukit.prepare
for stage in ("kernels_stage", "harness_stage", "stream_stage", "fullsize_stage"):
    __import__(f"dysink_deploy.gpukit.{stage}")
import dysink_deploy.runtime.builder, dysink_deploy.runtime.backends.torch_backend
print("ok")
"""


def test_the_stages_import_only_what_the_lent_machine_has():
    """KINDS.md's package list: torch, triton, numpy, onnx, onnxruntime, cuda-python, click, tqdm,
    matplotlib, psutil, safetensors, imageio; not PyAV, TensorRT, polygraphy, ftfy, tritonclient."""
    res = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
