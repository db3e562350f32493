"""The durable-output contract (issue 22): after a full disk at any byte, video.mp4 and stats.json
hold exactly the same blocks and the error line counts them. ENOSPC is injected into the writes
themselves (the video's bytes, torn where the budget ends, and stats.json's atomic write)."""

from __future__ import annotations

import errno
import json
import os

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


def _run(out, budget=None, monkeypatch=None):
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
    streamer = Streamer(FakeBackend(stream), model.dit, stream, default_prompt_embeds(model), seed=3)
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
