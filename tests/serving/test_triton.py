"""Serving on the real Triton Inference Server (tritonserver from PyPI's nvidia-pytriton wheel, CPU):
concurrent streams equal dysink-run's, the stream cap, cancellation frees the stream, bad requests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.serving_test_helpers import tritonserver_or_skip

pytestmark = pytest.mark.timeout(600) if hasattr(pytest.mark, "timeout") else []


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    tritonserver_or_skip()
    from dysink_deploy.serving.repo import write_repo
    from dysink_deploy.serving.server import TritonServer

    root = tmp_path_factory.mktemp("triton")
    repo = write_repo(str(bundles("fp32")), str(root / "repo"), max_streams=2, threads=1)
    srv = TritonServer(str(repo), log_file=str(root / "server.log")).start()
    yield srv
    srv.stop()


def _client(server):
    from dysink_deploy.serving.client import StreamClient

    return StreamClient(server.grpc_url, timeout_s=120)


def _reference(bundles, seed, blocks):
    from dysink_deploy import api

    with api.open_stream(bundles("fp32"), seed=seed, threads=1) as stream:
        return [(b.frames, b.stats) for b in stream.blocks(blocks)]


def _decisions(stats):
    from dysink_deploy.runtime.report import decisions

    return decisions({"blocks": stats})


def test_two_concurrent_streams_equal_dysink_run(server, bundles):
    results = {}

    def run(seed):
        c = _client(server)
        results[seed] = list(c.stream(seed, 4))
        c.close()

    threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for seed in (0, 1):
        got, ref = results[seed], _reference(bundles, seed, 4)
        assert len(got) == 4
        for (gf, gs), (rf, rs) in zip(got, ref):
            np.testing.assert_array_equal(gf, rf)
        assert _decisions([s for _, s in got]) == _decisions([s for _, s in ref])
    assert not np.array_equal(results[0][1][0], results[1][1][0]), "different seeds, different videos"


def test_cap_cancel_and_recovery(server):
    from dysink_deploy.errors import DysinkError

    long_streams, started = [], threading.Event()

    def hold(seed):
        c = _client(server)
        it = c.stream(seed, 200)
        next(it)                                  # running
        long_streams.append((c, it))
        started.set()

    holders = [threading.Thread(target=hold, args=(s,)) for s in (10, 11)]
    for t in holders:
        t.start()
    for t in holders:
        t.join(timeout=120)
    third = _client(server)
    with pytest.raises(DysinkError, match="already serves 2 streams"):
        list(third.stream(12, 2))
    # The two clients go away mid-stream: their streams stop and free their state.
    for c, it in long_streams:
        it.close()                                 # stop_stream(cancel_requests=True)
        c.close()
    deadline = time.monotonic() + 60
    status = third.status()
    while status["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.5)
        status = third.status()
    assert status["active_streams"] == 0 and status["cancelled"] >= 2 and status["refused"] >= 1
    assert len(list(third.stream(13, 2))) == 2, "the server keeps serving"
    third.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"settings": {"windw": 9}}, "unknown stream setting"),
    ({"settings": {"top_k": 3}}, "fixes the stream settings baked into its graphs"),
    ({"schedule": [{"frame": 6, "prompt_seed": 1}, {"frame": 3, "prompt_seed": 2}]}, "non-decreasing"),
    ({"prompt_embeds": np.zeros((3, 3), np.float32)}, "PROMPT_EMBEDS"),
    ({"prompt_embeds": np.zeros((512, 4096), np.float16)}, "PROMPT_EMBEDS"),
    ({"prompt": "a cat"}, "--tokenizer"),
])
def test_bad_requests_get_one_error_each(server, kwargs, message):
    from dysink_deploy.errors import DysinkError

    c = _client(server)
    with pytest.raises(DysinkError) as info:
        list(c.stream(0, 2, **kwargs))
    assert message in str(info.value) and "\n" not in str(info.value)
    c.close()


def test_cli_client_writes_a_run(server, tmp_path):
    import json

    from click.testing import CliRunner

    from dysink_deploy.serving.cli import client_main

    res = CliRunner().invoke(client_main, ["--url", server.grpc_url, "--blocks", "3", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["summary"]["blocks"] == 3 and (tmp_path / "o" / "video.mp4").stat().st_size > 0
    res = CliRunner().invoke(client_main, ["--url", "127.0.0.1:1", "--blocks", "1", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "cannot reach a Triton server" in res.output
