"""The Python API in threads (issue 22): a Stream serves one thread at a time and refuses, in one
line, a call from a second thread while a block runs and a call that changes it from inside its
own callbacks; independent streams in threads give exactly the frames they give alone (no state
shared between them: the weights' seeding, the thread count); bank() / read_page() after close
and read_page() of an empty page are refused instead of answering."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

pytest.importorskip("torch")

from dysink_deploy import api  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402

# The tiny preset, small and short: ~0.1 s a block on one core.
SMALL = {"height": 32, "width": 32, "denoising_steps": [1000, 500]}


def _open(seed=0, **kw):
    return api.open_stream(model="tiny", backend="torch", seed=seed, threads=1, settings=SMALL, **kw)


def _one_line(exc: pytest.ExceptionInfo, needle: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and needle in text, text


def test_a_second_thread_is_refused_while_a_block_runs():
    inside, done = threading.Event(), threading.Event()
    owner = {}

    def observer(event):
        if threading.current_thread() is owner.get("thread") and event.step == 0:
            inside.set()
            assert done.wait(60), "the other thread never answered"

    with _open(observer=observer) as stream:
        refused, results = [], []

        def first():
            owner["thread"] = threading.current_thread()
            results.append(stream.next_block().index)

        t = threading.Thread(target=first)
        t.start()
        assert inside.wait(60)
        for call in (stream.next_block, stream.bank, lambda: stream.read_page(0), stream.close):
            try:
                call()
            except DysinkError as exc:
                refused.append(str(exc))
        done.set()
        t.join(60)
        assert results == [0]
        assert len(refused) == 4 and all("in use by another thread" in r and "\n" not in r for r in refused), refused
        assert stream.next_block().index == 1, "the stream goes on where it was: no block taken twice or lost"


@pytest.mark.parametrize("call", ["next_block", "close", "switch_prompt", "write"])
def test_changing_the_stream_from_its_own_observer_is_refused(call, tmp_path):
    seen = []

    def observer(event):
        stream = holder[0]
        seen.append(stream.bank())                 # reading is allowed in there
        if event.step == 0 and event.block == 0:
            try:
                if call == "next_block":
                    stream.next_block()
                elif call == "close":
                    stream.close()
                elif call == "switch_prompt":
                    stream.switch_prompt(np.zeros((1, 1), np.float32))
                else:
                    stream.write(tmp_path / "out", blocks=1)
            except DysinkError as exc:
                seen.append(str(exc))

    holder = []
    with _open(observer=observer) as stream:
        holder.append(stream)
        block = stream.next_block()
        assert block.index == 0 and stream.blocks_done == 1
        errors = [s for s in seen if isinstance(s, str)]
        assert len(errors) == 1 and "from inside this stream's observer" in errors[0], errors
        assert stream.next_block().index == 1, "still open and usable after the refused call"
    assert not (tmp_path / "out").exists()


def test_bank_and_read_page_refuse_after_close_and_an_empty_page_is_said_empty():
    stream = _open()
    block = stream.next_block()
    pages = [e["page"] for e in stream.bank()]
    assert pages, "block 0 enters the empty bank"
    k, v = stream.read_page(pages[0])
    assert np.abs(k).max() > 0 and np.abs(v).max() > 0
    free = next(p for p in range(stream.config.pool_pages) if p not in pages)
    with pytest.raises(DysinkError) as exc:
        stream.read_page(free)
    _one_line(exc, f"page {free} is empty")
    stream.close()
    stream.close()                                 # twice is fine
    for call in (stream.bank, lambda: stream.read_page(pages[0]), stream.next_block):
        with pytest.raises(DysinkError) as exc:
            call()
        _one_line(exc, "this stream is closed")
    assert "closed" in repr(stream) and block.index == 0


def test_a_stream_leaves_the_callers_thread_count_alone():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _open() as stream:                     # threads=1: its own, inside its blocks only
            assert torch.get_num_threads() == 2
            stream.next_block()
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _frames(seed: int, blocks: int = 3) -> list[np.ndarray]:
    with _open(seed) as stream:
        return [b.frames for b in stream.blocks(blocks)]


def test_streams_in_threads_give_the_frames_they_give_alone():
    seeds = (0, 1, 2)
    alone = {s: _frames(s) for s in seeds}
    assert not np.array_equal(alone[0][1], alone[1][1]), "different seeds, different videos"
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)                   # interleave the threads finely: a race shows at once
    try:
        for trial in range(2):
            got, errors = {}, []
            barrier = threading.Barrier(len(seeds))

            def run(seed):
                try:
                    barrier.wait(60)               # open (build the weights) at the same time
                    got[seed] = _frames(seed)
                except Exception as exc:  # noqa: BLE001 (reported below)
                    errors.append(repr(exc))

            threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            for s in seeds:
                same = [np.array_equal(a, b) for a, b in zip(alone[s], got[s])]
                assert same == [True] * 3, f"trial {trial}, seed {s}: blocks equal to alone: {same}"
    finally:
        sys.setswitchinterval(interval)
