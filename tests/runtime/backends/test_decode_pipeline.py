"""The pipelined block loop (Streamer.blocks): block N's streamed VAE decode runs on the onnxruntime
backend's worker thread while block N+1 is made, and block N is handed out after that. It must hand
out the records that `step` gives one after the other, bit for bit, and lose no finished block when
the next one stops (Ctrl-C) or the deferred decode fails."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from dysink_deploy.runtime.noise import block_noise  # noqa: E402
from dysink_deploy.runtime.prompts import default_prompt_embeds  # noqa: E402
from dysink_deploy.runtime.stream import Streamer  # noqa: E402

BLOCKS = 5


def _streamer(bundle, threads, pipeline=None, **kw):
    backend = OnnxRuntimeBackend(bundle, threads=threads)
    return Streamer(backend, bundle.model.dit, bundle.stream, default_prompt_embeds(bundle.model), seed=0,
                    pipeline=pipeline, **kw)


def _run(streamer, blocks=BLOCKS):
    try:
        return list(streamer.blocks(blocks)), streamer.pipelines()
    finally:
        streamer.backend.close()


def _decisions(record) -> dict:
    return {k: v for k, v in record.to_json().items() if k != "timings_ms"}


@pytest.fixture(scope="module")
def bundle(bundles):
    return Bundle.load(bundles("fp32"))


@pytest.fixture(scope="module")
def plain(bundle):
    records, piped = _run(_streamer(bundle, 2, pipeline=False))
    assert not piped
    return records


@pytest.mark.parametrize("threads", [2, 1])
def test_pipelined_blocks_are_the_step_by_step_ones(bundle, plain, threads):
    """2 threads: on by default, the decode on the worker; 1 thread: off by default, and forced on it
    runs the deferred decode at once (Backend.decode_later's done Future): the same records either way."""
    assert _streamer(bundle, threads).pipelines() == (threads == 2)
    piped, on = _run(_streamer(bundle, threads, pipeline=True))
    assert on
    assert [r.index for r in piped] == list(range(BLOCKS))
    for a, b in zip(plain, piped):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.latent, b.latent)
        np.testing.assert_array_equal(a.feature, b.feature)
        assert _decisions(a) == _decisions(b)
    for r in piped[1:]:         # block 0 decodes once, in its own step: nothing deferred
        t = r.timings_ms
        assert t["decode_wait"] >= 0 and t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"),
                                                                     abs=0.01)
    assert "decode_wait" not in piped[0].timings_ms


def test_nothing_to_pipeline_without_the_block_alone_decode(bundle):
    injected = _streamer(bundle, 2, features=lambda i, frames, latent: np.ones(1))
    assert not injected.pipelines() and not injected.pipelines(True)
    injected.backend.close()


def test_a_stop_inside_the_next_block_hands_out_the_finished_one(bundle, plain):
    def noise(index, shape, steps):
        if index == 3:
            raise KeyboardInterrupt("stop in block 3")
        return block_noise(0, index, shape, steps)

    streamer, got = _streamer(bundle, 2, noise=noise), []
    try:
        with pytest.raises(KeyboardInterrupt, match="block 3"):
            for record in streamer.blocks(BLOCKS):
                got.append(record)
    finally:
        streamer.backend.close()
    assert [r.index for r in got] == [0, 1, 2]          # block 2 was deferred when block 3 stopped
    for a, b in zip(plain, got):
        np.testing.assert_array_equal(a.frames, b.frames)


def test_a_failed_deferred_decode_raises_after_the_blocks_before_it(bundle):
    streamer, got = _streamer(bundle, 2), []
    be, calls = streamer.backend, []
    decode = be.decode

    def failing(latent, first):
        calls.append(first)
        if calls.count(False) == 2:                     # block 2's streamed decode
            raise DysinkError("decode failed in block 2")
        return decode(latent, first)

    be.decode = failing
    try:
        with pytest.raises(DysinkError, match="block 2"):
            for record in streamer.blocks(BLOCKS):
                got.append(record)
    finally:
        be.close()
    assert [r.index for r in got] == [0, 1]


def test_dysink_run_no_pipeline_records_it(bundles, tmp_path):
    import json

    from click.testing import CliRunner

    from dysink_deploy.runtime import cli as run_cli

    for flag, expected in (("--no-pipeline", False), ("--pipeline", True)):
        out = tmp_path / flag
        res = CliRunner().invoke(run_cli.main, ["--bundle", str(bundles("fp32")), "--blocks", "3", "--threads", "2",
                                                flag, "--quiet", "--out", str(out)])
        assert res.exit_code == 0, res.output
        stats = json.loads((out / "stats.json").read_text())
        assert stats["config"]["pipeline"] is expected and len(stats["blocks"]) == 3
        assert ("decode_wait" in stats["blocks"][2]["timings_ms"]) is expected
