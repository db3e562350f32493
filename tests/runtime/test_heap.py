"""Freed heap goes back to the OS during long streams (runtime/heap.py): glibc otherwise keeps the
temporaries every block frees, and RSS creeps up with no leak behind it."""

from __future__ import annotations

import sys

import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime import heap
from dysink_deploy.runtime import stream as stream_mod
from dysink_deploy.runtime.backends.torch_backend import TorchBackend
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim and /proc are Linux (glibc) facts")
def test_release_free_heap_gives_memory_back():
    keep = [bytearray(64 * 1024) for _ in range(4096)]        # 256 MiB of small blocks in the heap
    del keep[:-1]
    before = heap.current_rss_mb()
    assert heap.release_free_heap() is True
    after = heap.current_rss_mb()
    assert before is not None and after is not None and after < before - 100, (before, after)


def test_the_stream_trims_every_few_blocks(monkeypatch):
    calls = []
    monkeypatch.setattr(stream_mod, "release_free_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(stream_mod, "TRIM_EVERY", 2)
    model = model_preset("tiny")
    stream = model.default_stream(feature_mode="streamed")
    streamer = Streamer(TorchBackend(build_models(model, seed=0), stream), model.dit, stream,
                        default_prompt_embeds(model), seed=0)
    for _ in streamer.blocks(5):
        pass
    assert len(calls) == 2      # after blocks 2 and 4


def test_memory_bench_judges_the_trimmed_rss():
    from click.testing import CliRunner

    from dysink_deploy.cli.bench_cli import main

    res = CliRunner().invoke(main, ["memory", "--blocks", "4", "--measure-block", "2", "--tolerance", "10"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("block ")] == ["block 2", "block 4"]
    verdict = lines[-1]
    assert verdict.startswith("PASSED | ") and "peak RSS" in verdict
    if sys.platform.startswith("linux"):
        assert "RSS after malloc_trim growth" in verdict
