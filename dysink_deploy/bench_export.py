"""Host memory of one `dysink-export onnx`, measured (`dysink-bench export-memory`).

The export runs in a child process (`python -m dysink_deploy.cli.export_cli onnx ...`) into a
temporary folder that is removed afterwards, whatever happens (an error, Ctrl-C, SIGTERM). The peak
is the child's own high-water mark: `os.wait4` returns the resource usage of that one process
(ru_maxrss, KiB on Linux), so earlier children of the caller (a test session's, say) do not count.
The planner's figures (runtime/plan.py) are the CLI's to add: this module stays below the runtime.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import MODEL_PRESETS, model_preset
from .errors import ConfigError, DysinkError
from .graphs import PRECISIONS, graph_specs
from .signals import StopHold

Log = Callable[[str], None]
MAX_SIDE = 4096                 # pixels; the release is 480x832
MAX_THREADS = 1024
STOP_GRACE_S = 60.0             # a stopped export removes its staged bundle; then it is killed


@dataclass(frozen=True)
class ExportRun:
    """One measured export: `command` as a user would type it (the bundle folder shown as BUNDLE),
    the child's peak RSS, its wall clock and CPU seconds, and the graphs it exported."""

    command: str
    threads: int | None
    peak_rss_bytes: int
    seconds: float
    cpu_seconds: float
    graphs: tuple[str, ...]


def export_args(model_name: str, precision: str, height: int | None = None, width: int | None = None,
                graphs: tuple[str, ...] | list[str] = ()) -> tuple[list[str], tuple[str, ...]]:
    """Check the configuration (one line per bad value) and return (`dysink-export onnx` arguments
    without --out, the graphs that export writes)."""
    if model_name not in MODEL_PRESETS:
        raise DysinkError(f"--model must be one of {', '.join(MODEL_PRESETS)}, got {model_name!r}")
    if precision not in PRECISIONS:
        raise DysinkError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cfg = model_preset(model_name)
    size = {}
    for flag, value in (("--height", height), ("--width", width)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= MAX_SIDE or value % 16:
            raise DysinkError(f"{flag} must be a multiple of 16 in 16..{MAX_SIDE}, got {value!r}")
        size[flag[2:]] = value
    try:
        stream = cfg.default_stream(**size)
    except ConfigError as exc:
        raise DysinkError(f"--height/--width: {exc}") from None
    specs = graph_specs(cfg, stream, precision)
    names = list(dict.fromkeys(graphs))
    unknown = [g for g in names if g not in specs]
    if unknown:
        raise DysinkError(f"--graph {', '.join(unknown)}: not a graph of this configuration; it has: "
                          f"{', '.join(specs)}")
    args = ["onnx", "--model", model_name, "--precision", precision,
            "--height", str(stream.height), "--width", str(stream.width)]
    for g in names:
        args += ["--graph", g]
    return args, tuple(names or specs)


def check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS):
        raise DysinkError(f"--threads must lie in 1..{MAX_THREADS}, got {threads!r}")


def _pump(stream, log: Log, tail: deque) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        tail.append(line)
        log(line)


def _stop(proc: subprocess.Popen) -> None:
    """The caller was stopped: let the export stop too (Ctrl-C from a terminal reached it already;
    else SIGTERM, which removes its staged bundle as Ctrl-C does), SIGKILL after a grace. Signals
    that arrive meanwhile are held: the child is always reaped."""
    with StopHold():
        try:
            proc.wait(timeout=2.0)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_export(model_name: str, precision: str, height: int | None = None, width: int | None = None,
                   graphs: tuple[str, ...] | list[str] = (), threads: int | None = None,
                   log: Log | None = None) -> ExportRun:
    """Run `dysink-export onnx` for this configuration in a child process into a temporary folder
    (removed afterwards, also on an error or a stop signal) and measure its peak RSS and wall clock.

    threads: OMP_NUM_THREADS / MKL_NUM_THREADS of the child (default: inherited). log: the child's
    output, one line a call. A failed export is a DysinkError with its last line.
    """
    args, names = export_args(model_name, precision, height, width, graphs)
    check_threads(threads)
    log = log or (lambda line: None)
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    shown = "dysink-export " + shlex.join(args + ["--out", "BUNDLE"])
    tmp = Path(tempfile.mkdtemp(prefix="dysink-export-memory-"))
    tail: deque = deque(maxlen=20)
    try:
        (tmp / "tmp").mkdir()       # the child's own temporary files (torch's caches) go with the folder
        env.update(TMPDIR=str(tmp / "tmp"), TMP=str(tmp / "tmp"), TEMP=str(tmp / "tmp"))
        argv = [sys.executable, "-m", "dysink_deploy.cli.export_cli", *args, "--out", str(tmp / "bundle")]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, tail), daemon=True)
        reader.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)      # this child's own rusage, not every child's
        except BaseException:
            _stop(proc)
            raise
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join(timeout=10)
        proc.stdout.close()
    finally:
        with StopHold():
            shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise DysinkError(f"the export failed (exit {proc.returncode}): {last.strip()} (command: {shown})")
    return ExportRun(command=shown, threads=threads, peak_rss_bytes=usage.ru_maxrss * 1024, seconds=seconds,
                     cpu_seconds=usage.ru_utime + usage.ru_stime, graphs=names)
