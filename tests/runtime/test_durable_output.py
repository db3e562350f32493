"""The durable-output contract (issue 22): after a full disk at any byte, video.mp4 and stats.json
hold exactly the same blocks and the error line counts them. ENOSPC is injected into the writes
themselves (the video's bytes, torn where the budget ends, and stats.json's atomic write)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime import report as report_mod
from dysink_deploy.runtime import run as run_mod
from dysink_deploy.runtime import video as video_mod
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer
from tests.runtime.fake_backend import FakeBackend

BLOCKS = 4


def _run(out, budget=None, monkeypatch=None, seed=3):
    if budget is not None:
        left = [budget]
        real_video, real_atomic = video_mod._DurableFile.write, report_mod.write_atomic

        def video_write(self, data):
            view = memoryview(data).cast("B")
            if len(view) > left[0]:
                real_video(self, view[:left[0]])        # a torn write, as a full disk gives
                left[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(view)
            return real_video(self, view)

        def atomic(path, data):
            if len(data) > left[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            left[0] -= len(data)
            real_atomic(path, data)

        monkeypatch.setattr(video_mod._DurableFile, "write", video_write)
        monkeypatch.setattr(report_mod, "write_atomic", atomic)
    model = model_preset("tiny")
    stream = model.default_stream(dedup_threshold=0.5)
    streamer = Streamer(FakeBackend(stream), model.dit, stream, default_prompt_embeds(model), seed=seed)
    return run_mod.stream_to_dir(streamer, model, stream, BLOCKS, str(out), {"model": "tiny"}, progress=False)


def _check_consistent(out) -> int:
    """video.mp4 decodes (strictly) exactly the frames stats.json lists; returns the blocks listed."""
    video, stats = out / "video.mp4", out / "stats.json"
    if not video.exists():
        assert not stats.exists() or not json.loads(stats.read_text())["blocks"]
        return 0
    blocks = json.loads(stats.read_text())["blocks"]
    assert video_mod.read_frame_count(str(video)) == sum(b["frames"] for b in blocks)
    return len(blocks)


def test_disk_full_at_any_byte_keeps_video_and_stats_equal(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "plot_timeline", lambda stats, path: None)     # fast; not what is tested
    (tmp_path / "full").mkdir()
    full = _run(tmp_path / "full")
    total = sum(f.stat().st_size for f in (tmp_path / "full").iterdir() if f.name != "timeline.png")  # stats.json is rewritten per block: the sweep goes to 5x
    assert full.blocks == BLOCKS and _check_consistent(tmp_path / "full") == BLOCKS
    seen = set()
    for budget in sorted({0, 100, 700, 800, 1500, 3000} | set(range(0, 5 * total, max(1, total // 5)))):
        with monkeypatch.context() as m:
            out = tmp_path / f"b{budget}"
            out.mkdir()
            try:
                result = _run(out, budget, m)
                kept = result.blocks
            except DysinkError as exc:
                assert "No space left on device" in str(exc), str(exc)
                kept = int(str(exc).split("(")[1].split(" blocks complete")[0])
            assert _check_consistent(out) == kept, (budget, kept)
            assert not list(out.glob(video_mod.PARTIAL_PREFIX + "*"))
            seen.add(kept)
    assert len(seen) >= 3, f"the sweep must stop the run at several blocks, got {sorted(seen)}"


def test_overwrite_keeps_previous_files_until_the_first_block(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "plot_timeline", lambda stats, path: None)
    out = tmp_path / "out"
    out.mkdir()
    _run(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class Boom(Exception):
        pass

    def no_block(self, n, **kw):
        raise Boom()
        yield

    monkeypatch.setattr(Streamer, "blocks", no_block)
    lock = run_mod.open_out_dir(str(out), overwrite=True)
    try:
        with pytest.raises(Boom):
            _run(out)
    finally:
        lock.close()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_disk_full_under_overwrite_keeps_the_previous_run_or_a_whole_new_one(tmp_path, monkeypatch):
    """--overwrite on a disk that fills up: until the new run has a block complete on disk, the previous
    run's files stay byte for byte (a first block still in the muxer's buffer is not one); from then on
    video.mp4 and stats.json are the new run's and agree."""
    monkeypatch.setattr(run_mod, "plot_timeline", lambda stats, path: open(path, "wb").close())
    prev = tmp_path / "prev"
    prev.mkdir()
    _run(prev, seed=7)
    before = {p.name: p.read_bytes() for p in prev.iterdir()}
    (tmp_path / "new").mkdir()
    _run(tmp_path / "new")
    # the first two blocks' fragments and two stats.json: past the point where the first block is on disk
    limit = 2 * (tmp_path / "new" / "video.mp4").stat().st_size // BLOCKS + 2 * (tmp_path / "new" / "stats.json").stat().st_size
    kept_seen = set()
    for budget in range(0, limit, max(1, limit // 16)):
        out = tmp_path / f"o{budget}"
        shutil.copytree(prev, out)
        with monkeypatch.context() as m:
            lock = run_mod.open_out_dir(str(out), overwrite=True)
            try:
                kept = _run(out, budget, m).blocks
            except DysinkError as exc:
                kept = int(str(exc).split("(")[1].split(" blocks complete")[0])
            finally:
                lock.close()
        files = {p.name: p.read_bytes() for p in out.iterdir()}
        if kept == 0:
            assert files == before, f"budget {budget}: the previous run's files changed with no new block kept"
        else:
            assert _check_consistent(out) == kept and files["video.mp4"] != before["video.mp4"], budget
            assert not list(out.glob(".*.partial-*")), budget
        kept_seen.add(kept)
    assert 0 in kept_seen and len(kept_seen) >= 2, sorted(kept_seen)


def test_a_killed_runs_temporary_files_go_with_the_next_run_and_nothing_else(tmp_path):
    """SIGKILL inside an atomic write leaves its hidden temporary file; the next run into that --out
    (with the lock) removes it, and the partial video and staged stats.json, but no file of the user's."""
    from dysink_deploy.runtime.video import remove_stale_partials

    stale = [".stats.json.tmp-k3j2", ".timeline.png.tmp-9x.png", ".video.mp4.partial-123", ".stats.json.partial-123"]
    mine = [".tmp-notes", "stats.json.tmp-backup", "notes.txt"]
    for name in stale + mine:
        (tmp_path / name).write_text("x")
    lock = run_mod.open_out_dir(str(tmp_path), overwrite=True)
    lock.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted(mine)
    remove_stale_partials(str(tmp_path))    # nothing left to remove: no error either
