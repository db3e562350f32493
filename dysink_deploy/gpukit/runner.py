"""`scripts/gpu-check.sh --kit`: every stage in its own process, under one time budget.

Each stage gets a timeout from what is left of the budget, less what the stages after it are
promised (`Stage.reserve_s`), and at least MIN_STAGE_S while that much is left; past its timeout
its process group is stopped (SIGTERM, then SIGKILL) and it is reported TIMEOUT with the numbers it
had saved. One line per stage on the console; the stages' own output goes to OUTDIR/gpu-check.log;
OUTDIR gets gpu-check.md, gpu-check.json and that log, nothing else (a lent machine returns few files).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from ..exitcodes import FAILED as EXIT_FAILED, PASSED as EXIT_PASSED, SKIPPED as EXIT_SKIPPED
from . import report
from .device import device_info, device_line, skip_reason
from .kit import load_manifest, source_matches
from .result import BAD, ERROR, FAILED, NOT_RUN, PASSED, SKIPPED, TIMEOUT, StageResult
from .stages import STAGES, Stage

MIN_STAGE_S = 10.0
KILL_GRACE_S = 5.0
LOG = "gpu-check.log"


def stage_timeout(budget_s: float, elapsed_s: float, later: Sequence[Stage], floor: float | None = None) -> float | None:
    """Seconds this stage may run, or None when the budget is spent (less than `floor` left)."""
    floor = MIN_STAGE_S if floor is None else floor
    remaining = budget_s - elapsed_s
    if remaining < floor:
        return None
    return max(remaining - sum(s.reserve_s for s in later), floor)


def stage_command(stage: Stage, kit: Path, work: Path, python: str) -> list[str]:
    return [python, "-m", "dysink_deploy.gpukit", stage.key, "--kit", str(kit), "--out", str(work)]


TIMEOUT_ENV = "DYSINK_GPUKIT_TIMEOUT_S"       # a stage's share, so that it can plan (stage d does)


def _child_env(timeout: float) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)          # the compiled kernels, never the interpreter
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[TIMEOUT_ENV] = f"{timeout:.0f}"
    return env


def _run_one(cmd: list[str], timeout: float, logfile, env: dict) -> tuple[int | None, float]:
    """-> (exit code, or None when stopped at the timeout; seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)       # the stage's own process group, started above
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        proc.wait()
        rc = None
    return rc, time.monotonic() - t0


def _outcome(stage: Stage, work: Path, rc: int | None, seconds: float, timeout: float) -> StageResult:
    res = StageResult.load(work, stage.key) or StageResult(stage.key, stage.title)
    res.title = res.title or stage.title
    res.seconds = round(seconds, 1)
    if rc is None:
        saved = f"; kept what it had saved ({len(res.rows)} rows)" if res.rows or res.numbers else ""
        res.status, res.detail = TIMEOUT, f"stopped at its {timeout:.0f} s share of the budget{saved}"
    elif rc == EXIT_SKIPPED and res.status != SKIPPED:
        res.status, res.detail = SKIPPED, res.detail or "skipped"
    elif rc not in (EXIT_PASSED, EXIT_FAILED, EXIT_SKIPPED):
        res.status = ERROR
        res.detail = f"exit code {rc}: {res.detail or 'see ' + LOG}"
    elif res.status == NOT_RUN:                 # ended without saving a result
        res.status = ERROR
        res.detail = f"exit code {rc} and no result saved; see {LOG}"
    return res


def verdict(results: list[StageResult]) -> tuple[str, int]:
    """-> (summary line, exit code). PASSED (0) when every stage passed or was skipped for a stated
    reason and at least one passed; otherwise FAILED / INCOMPLETE (1)."""
    bad = [r for r in results if r.status in BAD]
    passed = [r for r in results if r.status == PASSED]
    skipped = [r for r in results if r.status == SKIPPED]
    tail = "".join(f"; {r.stage} skipped: {r.detail}" for r in skipped)
    if bad:
        word = "FAILED" if any(r.status in (FAILED, ERROR) for r in bad) else "INCOMPLETE"
        names = ", ".join(f"{r.stage} {r.status}" for r in bad)
        return f"{word} | {len(passed)} of {len(results)} stages passed; {names}{tail}", EXIT_FAILED
    if not passed:
        return f"SKIPPED | no stage could run{tail}", EXIT_SKIPPED
    return f"PASSED | {len(passed)} of {len(results)} stages passed{tail}", EXIT_PASSED


def run_kit(kit: str | os.PathLike, out: str | os.PathLike, budget_s: float = 540.0, log: Callable = print,
            stages: Sequence[Stage] = STAGES, python: str = sys.executable,
            command: Callable[[Stage, Path, Path, str], list[str]] = stage_command) -> int:
    """The whole kit; returns the exit code (0 passed, 1 failed or incomplete, 77 skipped)."""
    t0 = time.monotonic()
    kit, out = Path(kit).resolve(), Path(out)
    manifest = load_manifest(kit)
    reason = skip_reason()
    if reason:
        log(f"SKIPPED | scripts/gpu-check.sh --kit needs a CUDA GPU: {reason} (exit {EXIT_SKIPPED}: not a pass)")
        return EXIT_SKIPPED
    out.mkdir(parents=True, exist_ok=True)
    info = device_info()
    log(f"device | {device_line(info)}")
    if not source_matches(manifest):
        log("warning | this checkout's Python sources differ from the ones the kit was prepared from: the CPU "
            "reference may not apply; prepare the kit again from this checkout")
    results: list[StageResult] = []
    with tempfile.TemporaryDirectory(prefix="dysink-gpukit-work-") as tmp, open(out / LOG, "w") as logfile:
        work = Path(tmp)
        for i, stage in enumerate(stages):
            timeout = stage_timeout(budget_s, time.monotonic() - t0, stages[i + 1:])
            if timeout is None:
                res = StageResult(stage.key, stage.title, NOT_RUN, f"the {budget_s:.0f} s budget was spent before it")
            else:
                logfile.write(f"===== stage {stage.letter} {stage.key} (timeout {timeout:.0f} s) =====\n")
                logfile.flush()
                rc, seconds = _run_one(command(stage, kit, work, python), timeout, logfile, _child_env(timeout))
                res = _outcome(stage, work, rc, seconds, timeout)
            results.append(res)
            took = f"{res.seconds:7.1f} s" if res.seconds is not None else "      - "
            log(f"{stage.letter} {stage.key:<9}| {res.status:<8}| {took} | {res.detail}")
        line, code = verdict(results)
        report.write(out, info, manifest, results, line, budget_s, time.monotonic() - t0)
    log(line)
    log(f"report | {out / report.MARKDOWN}, {out / report.JSON}, {out / LOG}")
    return code
