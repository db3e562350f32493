"""The kit's runner (dysink_deploy/gpukit/runner.py) without a GPU: the budget split, a stage that
sleeps past its share (stopped, its saved numbers kept, SIGTERM ignored: SIGKILL), the verdict, the
report files, and the one-line skip."""

from __future__ import annotations

import json
import sys
import time

import pytest

from dysink_deploy.exitcodes import FAILED, PASSED, SKIPPED
from dysink_deploy.gpukit import kit as K, runner
from dysink_deploy.gpukit.result import StageResult
from dysink_deploy.gpukit.stages import STAGES, Stage


@pytest.fixture()
def empty_kit(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    K.write_manifest(kit, {}, [90])
    return kit


def test_each_stage_gets_what_is_left_less_the_later_stages_reserves():
    later = STAGES[1:]
    assert runner.stage_timeout(540, 0, later, floor=10) == 540 - sum(s.reserve_s for s in later)
    assert runner.stage_timeout(540, 500, later, floor=10) == 10          # at least the floor while it is left
    assert runner.stage_timeout(540, 535, later, floor=10) is None        # spent: the stage is not started
    assert runner.stage_timeout(100, 20, (), floor=10) == 80               # the last stage takes the rest


SLEEPY = """
import signal, sys, time
from dysink_deploy.gpukit.result import StageResult
signal.signal(signal.SIGTERM, signal.SIG_IGN)          # makes the runner escalate to SIGKILL
r = StageResult("sleepy", "sleeps past its budget", out=sys.argv[1])
r.numbers["measured_before_the_stop"] = 1.5
r.rows.append({"configuration": "first", "frames/s": 3.0})
r.save()
time.sleep(60)
"""
QUICK = """
import sys
from dysink_deploy.gpukit.result import StageResult
StageResult("quick", "passes at once", out=sys.argv[1]).finish("PASSED", "fine")
"""


def test_a_stage_past_its_budget_is_stopped_and_the_next_one_still_runs(empty_kit, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "skip_reason", lambda: None)
    monkeypatch.setattr(runner, "device_info", lambda: {"gpu": "stand-in", "versions": {}})
    monkeypatch.setattr(runner, "MIN_STAGE_S", 0.5)
    monkeypatch.setattr(runner, "KILL_GRACE_S", 0.5)
    stages = (Stage("sleepy", "a", "sleeps past its budget", 0, "x"), Stage("quick", "b", "passes at once", 2, "x"))
    code = {"sleepy": SLEEPY, "quick": QUICK}

    def command(stage, kit, work, python):
        return [sys.executable, "-c", code[stage.key], str(work)]

    lines = []
    t0 = time.monotonic()
    rc = runner.run_kit(empty_kit, tmp_path / "out", budget_s=4, log=lines.append, stages=stages, command=command)
    took = time.monotonic() - t0
    assert rc == FAILED and took < 15, (rc, took, lines)
    stage_lines = [ln for ln in lines if ln.startswith(("a ", "b "))]
    assert len(stage_lines) == 2 and "TIMEOUT" in stage_lines[0] and "PASSED" in stage_lines[1], lines
    assert any(ln.startswith("INCOMPLETE | 1 of 2 stages passed; sleepy TIMEOUT") for ln in lines), lines
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    sleepy = report["stages"][0]
    assert sleepy["status"] == "TIMEOUT" and sleepy["numbers"]["measured_before_the_stop"] == 1.5
    assert sleepy["rows"] == [{"configuration": "first", "frames/s": 3.0}]
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| sleepy: sleeps past its budget | TIMEOUT |" in md and "| first | 3 |" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check.json", "gpu-check.log", "gpu-check.md"]


def test_a_spent_budget_leaves_the_later_stages_not_run(empty_kit, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "skip_reason", lambda: None)
    monkeypatch.setattr(runner, "device_info", lambda: {"versions": {}})
    stages = (Stage("quick", "a", "passes at once", 0, "x"),)
    lines = []
    rc = runner.run_kit(empty_kit, tmp_path / "out", budget_s=1, log=lines.append, stages=stages,
                        command=lambda *a: [sys.executable, "-c", QUICK, str(a[2])])
    assert rc == FAILED and any("NOT RUN" in ln for ln in lines), lines


def test_verdicts():
    def r(status):
        return StageResult("s", status=status, detail="why")

    assert runner.verdict([r("PASSED"), r("SKIPPED")]) == ("PASSED | 1 of 2 stages passed; s skipped: why", PASSED)
    assert runner.verdict([r("SKIPPED")])[1] == SKIPPED                  # nothing ran: not a pass
    assert runner.verdict([r("PASSED"), r("FAILED")])[0].startswith("FAILED |")
    assert runner.verdict([r("PASSED"), r("ERROR")])[1] == FAILED


def test_without_a_gpu_one_skipped_line_and_77(empty_kit, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "skip_reason", lambda: "no CUDA GPU visible to torch")
    lines = []
    assert runner.run_kit(empty_kit, tmp_path / "out", log=lines.append) == SKIPPED == 77
    assert len(lines) == 1 and lines[0].startswith("SKIPPED | ") and "not a pass" in lines[0]
    assert not (tmp_path / "out").exists()
