"""The durable-output contract of `dysink-run` at every instant (issue 22; README, "What happens when").

A SIGKILL leaves on disk what the process had written when it died. Freezing the run with SIGSTOP and
copying --out gives exactly that state without ending it, so one run yields a kill point after every
new fragment, after every rewrite of stats.json and at random moments; a few real SIGKILLs check the
same rule. The runs are the real `dysink-run` command with the numpy fake backend (tests/durable_harness.py:
torch's start-up would cost seconds per process). The rule: `stats.json`
(whenever it is there) is whole JSON, every block it lists decodes from `video.mp4`, and the video holds
at most the next block beyond them (whole or cut short), bytes the finished video starts with.

Then the signals the process sees: a storm of SIGINT / SIGTERM after the first one does not cut the
cleanup, and SIGTERM after the last block ends the run as finished. In process, with the fake backend:
a second signal while the first one is being handled, and a signal as the block loop ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dysink_deploy import signals as signals_mod
from dysink_deploy.config import model_preset
from dysink_deploy.runtime import run as run_mod
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer
from dysink_deploy.runtime.video import read_frame_count
from tests.runtime.fake_backend import FakeBackend

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "durable_harness.py")
RUN = [sys.executable, HARNESS, "--quiet", "--model", "tiny", "--threads", "1", "--height", "32", "--width", "32",
       "--seed", "5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DYSINK_TEST_PACE_S": "0.05"}


def _start(out, blocks: int) -> subprocess.Popen:
    return subprocess.Popen(RUN + ["--blocks", str(blocks), "--out", str(out)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _listed(out) -> int:
    try:
        return len(json.loads((out / "stats.json").read_text())["blocks"])
    except (OSError, ValueError, KeyError):
        return 0


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "Tt"


def _snapshot(out) -> dict:
    """The files a SIGKILL at this instant would leave (read while the process is frozen or dead)."""
    snap = {}
    for name in ("stats.json", "video.mp4"):
        try:
            snap[name] = (out / name).read_bytes()
        except FileNotFoundError:
            snap[name] = None
    return snap


_DECODED: dict = {}      # (size, hash) of a video state -> frames that decode


def _check_rule(snap: dict, reference: list[dict], final_video: bytes | None, tmp, tag: str) -> int:
    """The SIGKILL rule of the README on one state; returns the blocks stats.json lists."""
    stats = snap["stats.json"]
    blocks = json.loads(stats)["blocks"] if stats is not None else []      # never half-written
    n = len(blocks)
    assert [b["index"] for b in blocks] == list(range(n)), tag
    assert [b["frames"] for b in blocks] == [b["frames"] for b in reference[:n]], tag
    video = snap["video.mp4"]
    decoded = 0
    if video is not None:
        if final_video is not None:
            assert final_video.startswith(video), f"{tag}: the video holds bytes the finished one does not"
        key = (len(video), hash(video))
        if key not in _DECODED:
            path = tmp / f"{tag}.mp4"
            path.write_bytes(video)
            _DECODED[key] = read_frame_count(str(path), strict=False)
        decoded = _DECODED[key]
    listed = sum(b["frames"] for b in blocks)
    beyond = reference[n]["frames"] if n < len(reference) else 0
    assert decoded >= listed, f"{tag}: stats.json lists {n} blocks ({listed} frames), the video decodes {decoded}"
    assert decoded <= listed + beyond, (f"{tag}: the video decodes {decoded} frames, more than the {n} blocks "
                                        f"stats.json lists ({listed}) and the next one")
    return n


def _freeze_and_copy(proc, out) -> dict:
    try:
        os.kill(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return {}
    try:
        while proc.poll() is None and not _stopped(proc.pid):
            time.sleep(0.0002)
        return _snapshot(out) if proc.poll() is None else {}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)


class _Driven:
    """One dysink-run and what the test does to it, one step per poll."""

    def __init__(self, out, blocks, freeze=False, kill_after=None, kill_at=None, storm_after=None,
                 storm_every=0.003, rng=None):
        self.out, self.blocks, self.freeze, self.kill_after, self.kill_at = out, blocks, freeze, kill_after, kill_at
        self.storm_after, self.storm_every, self.rng = storm_after, storm_every, rng or random.Random()
        self.proc = _start(out, blocks)
        self.snaps, self.size, self.grown, self.first_video, self.killed = [], -1, 0, None, False
        self.storm_next, self.storm_sent, self.next_random = None, 0, time.time() + self.rng.uniform(0.3, 1.0)

    def step(self, now: float) -> None:
        size = _size(self.out / "video.mp4")
        grew = size != self.size and size > 0
        if grew:
            self.size, self.grown = size, self.grown + 1
            self.first_video = self.first_video or now
        rewritten = self._stats_changed()
        if self.storm_next is None and self.storm_after is not None and rewritten \
                and _listed(self.out) >= self.storm_after:
            self.storm_next = now           # the storm begins: from now on no freezing, only signals
        if self.storm_next is not None:
            if now >= self.storm_next:
                sig = signal.SIGTERM if self.storm_sent % 2 == 0 else signal.SIGINT
                self._send(sig)
                self.storm_sent += 1
                self.storm_next = now + self.storm_every
            return
        if self.freeze and (grew or rewritten or now >= self.next_random):
            # just after a fragment reached the video, just after stats.json was replaced, or at random
            if now >= self.next_random:
                self.next_random = now + self.rng.uniform(0.005, 0.08)
            snap = _freeze_and_copy(self.proc, self.out)
            if snap:
                self.snaps.append(snap)
        if ((self.kill_after is not None and self.grown > self.kill_after)
                or (self.kill_at is not None and self.first_video and now - self.first_video > self.kill_at)):
            self._send(signal.SIGKILL)
            self.killed = True

    def _stats_changed(self) -> bool:
        try:
            st = os.stat(self.out / "stats.json")
        except OSError:
            return False
        seen, self.stats_seen = getattr(self, "stats_seen", None), (st.st_mtime_ns, st.st_size, st.st_ino)
        return seen != self.stats_seen

    def _send(self, sig) -> None:
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    """Seven runs at once: `frozen` is copied after every fragment and at random moments; `last` gets a
    SIGTERM / SIGINT every 10 ms once its last block is in the video writer; `kill1` / `kill4` are
    SIGKILLed just after their first / fourth fragment reaches the video (the instant the video is a
    block ahead of stats.json), `kill_random*` at random moments; `storm` gets SIGTERM after 2 blocks,
    then SIGINT and SIGTERM in turn every 3 ms until it exits."""
    rng = random.Random()
    tmp = tmp_path_factory.mktemp("kill")
    blocks = 8
    runs = {"frozen": _Driven(tmp / "frozen", blocks, freeze=True, rng=rng),
            "last": _Driven(tmp / "last", 4, storm_after=3, storm_every=0.01),
            "kill1": _Driven(tmp / "kill1", blocks, kill_after=1),
            "kill4": _Driven(tmp / "kill4", blocks, kill_after=4),
            "kill_random": _Driven(tmp / "kill_random", blocks, kill_at=rng.uniform(0.0, 0.6)),
            "kill_random2": _Driven(tmp / "kill_random2", blocks, kill_at=rng.uniform(0.0, 0.6)),
            "storm": _Driven(tmp / "storm", 200, storm_after=2)}
    end = time.time() + 300
    try:
        while time.time() < end and any(r.proc.poll() is None for r in runs.values()):
            now = time.time()
            for r in runs.values():
                if r.proc.poll() is None:
                    r.step(now)
            time.sleep(0.001)
        for r in runs.values():
            r.stdout, r.stderr = r.proc.communicate(timeout=60)
    finally:
        for r in runs.values():
            r.proc.kill()
    runs["tmp"] = tmp
    return runs


def test_a_kill_at_any_instant_leaves_what_the_readme_says(driven):
    frozen, tmp = driven["frozen"], driven["tmp"]
    assert frozen.proc.returncode == 0, frozen.stderr[-800:]
    reference = json.loads((frozen.out / "stats.json").read_text())["blocks"]
    final_video = (frozen.out / "video.mp4").read_bytes()
    assert len(reference) == frozen.blocks
    seen = {_check_rule(s, reference, final_video, tmp, f"stop{i}") for i, s in enumerate(frozen.snaps)}
    assert len(seen) >= frozen.blocks // 2, f"the run was frozen at too few points: {sorted(seen)}"
    for name in ("kill1", "kill4", "kill_random", "kill_random2"):
        run = driven[name]
        assert run.killed and run.proc.returncode == -signal.SIGKILL, f"{name} ended before it was killed"
        _check_rule(_snapshot(run.out), reference, final_video, tmp, name)


def test_b_signals_during_the_cleanup_do_not_cut_it(driven):
    run = driven["storm"]
    stdout, stderr = run.stdout, run.stderr
    assert run.storm_sent >= 2, "the run ended before the second signal"
    assert run.proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), (run.proc.returncode, stderr[-800:])
    assert "Traceback" not in stderr and "before the first block" not in stderr, stderr[-800:]
    blocks = json.loads((run.out / "stats.json").read_text())["blocks"]
    last = stdout.strip().splitlines()[-1]
    frames = sum(b["frames"] for b in blocks)
    assert len(blocks) >= 2 and last.startswith(f"INTERRUPTED | {len(blocks)} blocks, {frames} frames"), last
    assert read_frame_count(str(run.out / "video.mp4")) == frames
    assert (run.out / "timeline.png").is_file()


def test_c_sigterm_after_the_last_block_is_a_finished_run(driven):
    run = driven["last"]                # stats.json lists blocks - 1 once the last block is in the video writer
    stdout, stderr = run.stdout, run.stderr
    assert run.storm_sent >= 1, "the run ended before the signal"
    assert run.proc.returncode == 0, (run.proc.returncode, stderr[-800:])
    assert "Traceback" not in stderr and "interrupted" not in stderr, stderr[-800:]
    stats = json.loads((run.out / "stats.json").read_text())["blocks"]
    frames = sum(b["frames"] for b in stats)
    assert len(stats) == run.blocks
    assert stdout.strip().splitlines()[-1].startswith(f"DONE | {run.blocks} blocks, {frames} frames")
    assert read_frame_count(str(run.out / "video.mp4")) == frames


# In process (fake backend, no torch): the instants a subprocess cannot aim at.

@pytest.fixture
def stop_signals():
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signals_mod.install_stop_signals()
    yield
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _fake_run(out, blocks=4, **kw):
    model = model_preset("tiny")
    stream = model.default_stream(dedup_threshold=0.5)
    streamer = Streamer(FakeBackend(stream), model.dit, stream, default_prompt_embeds(model), seed=3)
    try:
        return run_mod.stream_to_dir(streamer, model, stream, blocks, str(out), {"model": "tiny"}, progress=False,
                                     **kw)
    except KeyboardInterrupt as exc:        # as such it would end pytest's whole session
        pytest.fail(f"{exc!r} escaped the run: its files were never settled")


def _consistent(out) -> int:
    blocks = json.loads((out / "stats.json").read_text())["blocks"]
    assert read_frame_count(str(out / "video.mp4")) == sum(b["frames"] for b in blocks)
    return len(blocks)


def test_b_second_signal_while_the_first_is_handled(tmp_path, monkeypatch, stop_signals):
    """SIGTERM at block 2, and a second one just as the run takes note of the first (before any
    cleanup began): the run still settles its files and returns what it kept."""
    monkeypatch.setattr(run_mod, "plot_timeline", lambda stats, path: open(path, "wb").close())
    real_step, real_code = Streamer.step, run_mod.exit_code
    count = [0]

    def step(self):
        count[0] += 1
        if count[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    def exit_code(exc):
        os.kill(os.getpid(), signal.SIGTERM)        # the second signal, while the first is handled
        return real_code(exc)

    monkeypatch.setattr(Streamer, "step", step)
    monkeypatch.setattr(run_mod, "exit_code", exit_code)
    result = _fake_run(tmp_path)
    assert result.interrupted and result.exit_code == 143
    assert result.blocks == _consistent(tmp_path) == 2
    assert (tmp_path / "timeline.png").is_file()


class _SignalAtHold(signals_mod.StopHold):
    """A hold that gets SIGTERM just as the run begins it, when the block loop has ended."""

    sent = False

    def begin(self):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().begin()


@pytest.mark.parametrize("when", ["generator", "hold"])
def test_c_signal_as_the_loop_ends(tmp_path, monkeypatch, stop_signals, when):
    """SIGTERM once the last block is written: while the block loop winds down, or just as the cleanup's
    hold begins. A finished run either way."""
    monkeypatch.setattr(run_mod, "plot_timeline", lambda stats, path: open(path, "wb").close())
    real = Streamer.blocks

    def blocks(self, n):
        yield from real(self, n)
        if when == "generator":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Streamer, "blocks", blocks)
    hold = _SignalAtHold() if when == "hold" else None
    try:
        result = _fake_run(tmp_path, blocks=3, hold=hold)
    finally:
        if hold is not None:
            hold.end()
    assert not result.interrupted and result.exit_code == 0
    assert result.blocks == _consistent(tmp_path) == 3


def test_a_held_default_sigterm_still_ends_the_process():
    """A program that never set a SIGTERM handler (the Python API): a SIGTERM held during a cleanup
    ends the process once the hold ends, instead of being dropped."""
    code = ("import os, signal, sys\n"
            "from dysink_deploy.signals import StopHold\n"
            "hold = StopHold().begin()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('cleanup done', flush=True)\n"
            "hold.end()\n"
            "print('survived', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == -signal.SIGTERM and proc.stdout.split() == ["cleanup", "done"], (proc.returncode,
                                                                                             proc.stdout)
