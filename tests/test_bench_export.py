"""dysink-bench export-memory: the export runs in a child process into a temporary folder that is gone
afterwards (also when the run is stopped), and the printed fields are the child's peak and the planner's
figures (the peak itself is measured, not asserted beyond being the export's)."""

import os
import re
import tempfile

import pytest
from click.testing import CliRunner

from dysink_deploy import bench_export
from dysink_deploy.cli import bench_cli
from dysink_deploy.config import model_preset
from dysink_deploy.runtime.plan import GB, check_export, weight_counts

pytest.importorskip("onnxscript")


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """tempfile's folder, here: what the command leaves behind is visible."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _mb(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+) (GB|MB)", text).groups()
    return float(value) * (1000 if unit == "GB" else 1)


def test_tiny_export_prints_its_peak_and_leaves_nothing(tmp_root):
    res = CliRunner().invoke(bench_cli.main, ["export-memory", "--model", "tiny", "--graph", "retrieve",
                                              "--threads", "1", "--limit", "100GB"])
    assert res.exit_code == 0, res.output
    fields = dict(re.findall(r"^([a-z A-Z]+): (.*)$", res.output, re.M))
    assert fields["export"].startswith("dysink-export onnx --model tiny --precision fp32 --height 64 --width 96 "
                                       "--graph retrieve --out BUNDLE (1 graph(s): retrieve; OMP_NUM_THREADS=1)")
    peak_mb = _mb(fields["peak RSS"].split(" (")[0])
    assert 100 < peak_mb < 100_000 / 2        # a python that imported torch; not a figure in KB taken as MB
    assert float(fields["wall time"].split(" s")[0]) > 0
    params = sum(weight_counts(model_preset("tiny")).values())
    assert f"({params:,} weights in fp32" in fields["weights"]
    assert abs(_mb(fields["weights"].split(" (")[0]) - params * 4 / 1e6) < 0.1
    estimate = check_export(model_preset("tiny"), "fp32", 1 << 62)
    assert abs(_mb(fields["planner estimate"].split(" (")[0]) - estimate / 1e6) < 0.1
    assert re.search(r"^PASSED \| peak RSS [0-9.]+ [GM]B <= limit 100.00 GB$", res.output, re.M)
    assert os.listdir(tmp_root) == []          # the bundle, the folder and the child's own temporary files


def test_the_verdict_fails_above_the_limit(monkeypatch):
    run = bench_export.ExportRun("dysink-export onnx ...", None, int(8.5 * GB), 1.0, 1.0, ("retrieve",))
    monkeypatch.setattr(bench_cli, "measure_export", lambda *a, **k: run)
    res = CliRunner().invoke(bench_cli.main, ["export-memory", "--limit", "8GB"])
    assert res.exit_code == 1 and "FAILED | peak RSS 8.50 GB > limit 8.00 GB" in res.output
    res = CliRunner().invoke(bench_cli.main, ["export-memory"])
    assert res.exit_code == 0 and "verdict: none (no --limit given)" in res.output


def test_a_stop_ends_the_export_and_removes_the_folder(tmp_root, monkeypatch):
    started = []

    def stopped(pid, options):      # Ctrl-C while the export runs
        started.append(pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_export.os, "wait4", stopped)
    with pytest.raises(KeyboardInterrupt):
        bench_export.measure_export("tiny", "fp32", graphs=["retrieve"], threads=1)
    assert started and not os.path.exists(f"/proc/{started[0]}")       # reaped, not left running
    assert os.listdir(tmp_root) == []


@pytest.mark.parametrize("flags, line", [
    (["--height", "17"], "--height must be a multiple of 16 in 16..4096, got 17"),
    (["--width", "0"], "--width must be a multiple of 16 in 16..4096, got 0"),
    (["--height", "8192"], "--height must be a multiple of 16 in 16..4096, got 8192"),
    (["--graph", "nope"], "--graph nope: not a graph of this configuration; it has: text_encoder"),
    (["--threads", "0"], "1..1024, got 0"),
    (["--limit", "lots"], "--limit 'lots' is not a size"),
    (["--limit", "0"], "--limit must be > 0"),
])
def test_bad_flags_are_one_line_before_any_export(flags, line, monkeypatch):
    monkeypatch.setattr(bench_cli, "measure_export", lambda *a, **k: pytest.fail("the export ran"))
    res = CliRunner().invoke(bench_cli.main, ["export-memory", *flags])
    assert res.exit_code == 2 and line in res.output and len(res.output.strip().splitlines()) == 1, res.output
