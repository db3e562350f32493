"""Faults during a run (issue 9): a full disk and non-finite values stop the run at once with one
line; what was written before stays complete and playable. The faults are injected where the OS or
the model would produce them (an OSError from the video write, NaN from the decoder)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime import run as run_mod
from dysink_deploy.runtime.backends.torch_backend import TorchBackend
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.run import stream_to_dir
from dysink_deploy.runtime.stream import Streamer
from dysink_deploy.runtime.video import VideoWriter, read_frame_count


def _streamer(backend_wrapper=None):
    model = model_preset("tiny")
    stream = model.default_stream(feature_mode="streamed")
    backend = TorchBackend(build_models(model, seed=0), stream)
    if backend_wrapper:
        backend = backend_wrapper(backend)
    return Streamer(backend, model.dit, stream, default_prompt_embeds(model), seed=0), model, stream


def test_disk_full_stops_with_one_line_and_keeps_the_blocks(tmp_path, monkeypatch):
    real = VideoWriter.write_block

    def write_block(self, frames):
        if self.blocks_written == 3:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        real(self, frames)

    monkeypatch.setattr(VideoWriter, "write_block", write_block)
    streamer, model, stream = _streamer()
    with pytest.raises(DysinkError) as info:
        stream_to_dir(streamer, model, stream, 6, str(tmp_path), {"model": "tiny"}, progress=False)
    message = str(info.value)
    assert message.startswith("No space left on device writing ") and "video.mp4 (3 blocks complete)" in message
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert len(stats["blocks"]) == 3
    assert read_frame_count(str(tmp_path / "video.mp4")) == 9 + 12 * 2


class _NaNFromBlock:
    """The backend, except that decoding from block `at` on yields NaN (a diverging model)."""

    def __init__(self, inner, at):
        self._inner, self._at, self._blocks = inner, at, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def decode(self, latent, first):
        out = self._inner.decode(latent, first)
        self._blocks += 1
        return out * float("nan") if self._blocks > self._at else out


def test_non_finite_values_stop_the_run_at_that_block(tmp_path):
    streamer, model, stream = _streamer(lambda be: _NaNFromBlock(be, 2))
    with pytest.raises(DysinkError, match=r"block 2: the decoded frames hold NaN or Inf values"):
        stream_to_dir(streamer, model, stream, 5, str(tmp_path), {"model": "tiny"}, progress=False)
    stats = json.loads((tmp_path / "stats.json").read_text())      # strict JSON: no NaN
    assert [b["index"] for b in stats["blocks"]] == [0, 1]
    assert read_frame_count(str(tmp_path / "video.mp4")) == 9 + 12


def test_stats_refuse_nan(tmp_path):
    with pytest.raises(ValueError):
        run_mod.write_stats(str(tmp_path / "s.json"), {}, [{"score": np.float64("nan").item()}])
