"""Window growth, page slots and page lifetimes, with expectations spelled out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy.config import StreamConfig
from dysink_deploy.runtime.pages import PageAllocator
from dysink_deploy.runtime.schedule import ContextScheduler, QueryQueue


def _released(**kw):
    return StreamConfig(height=64, width=96, **kw)


def test_window_frames_growth():
    cfg = _released()
    # 9 + 3 * missing(top_k 2): spelled out
    assert [cfg.window_frames(n) for n in range(5)] == [15, 12, 9, 9, 9]
    assert cfg.local_slots == 4 and cfg.sink_slots == 2
    assert cfg.pool_pages == 16 + 4 + 1 + 0


def test_local_pages_block_by_block():
    cfg = _released()
    pages = PageAllocator(cfg.pool_pages)
    sched = ContextScheduler(cfg, pages)
    bank_sizes = [0, 1, 2, 2, 3, 3]
    expected_local = [[], [0], [1, 0], [2, 1], [3, 2], [4, 3]]   # page ids, most recent first
    expected_starts = [[], [0], [3, 0], [6, 3], [9, 6], [12, 9]]
    expected_window = [15, 12, 9, 9, 9, 9]
    for i, bank in enumerate(bank_sizes):
        ctx = sched.context(i, bank)
        assert ctx.start_frame == 3 * i
        assert ctx.window_frames == expected_window[i]
        assert ctx.local_pages == expected_local[i], f"block {i}"
        assert ctx.local_starts == expected_starts[i]
        assert ctx.local_ids(cfg.local_slots).tolist() == expected_local[i] + [-1] * (4 - len(expected_local[i]))
        assert ctx.fixed_pages == []
        sched.commit(i, pages.alloc())
    # History keeps the last 4 blocks (the widest window's past). Committing block 4
    # released page 0, which block 5 then reused; committing block 5 released page 1.
    assert sched.history[-1] == (5, 0)
    assert [p for _, p in sched.history] == [2, 3, 4, 0]
    assert pages.refcount(1) == 0 and pages.refcount(0) == 1 and pages.in_use == 4


def test_widest_window_when_bank_stays_empty():
    cfg = _released()
    pages = PageAllocator(cfg.pool_pages)
    sched = ContextScheduler(cfg, pages)
    for i in range(6):
        ctx = sched.context(i, 0)
        assert ctx.local_pages == list(range(i - 1, max(-1, i - 5), -1)), f"block {i}"
        sched.commit(i, pages.alloc())


def test_fixed_sink_counts_against_the_window():
    cfg = _released(sink_size=3)
    assert cfg.sink_slots == 3 and cfg.pool_pages == 16 + 4 + 1 + 1
    pages = PageAllocator(cfg.pool_pages)
    sched = ContextScheduler(cfg, pages)
    # (bank size, expected fixed pages, expected local pages):
    # block 1: window 12 -> 12 - 3 sink = 9 frames = current + 2 past, but only block 0 exists and it is the sink.
    # block 2: window 9 -> 6 frames = current + 1 past non-sink block.
    plan = [(0, [], []), (1, [0], []), (2, [0], [1]), (2, [0], [2]), (3, [0], [3])]
    for i, (bank, fixed, local) in enumerate(plan):
        ctx = sched.context(i, bank)
        assert ctx.fixed_pages == fixed and ctx.local_pages == local, f"block {i}"
        assert ctx.sink_ids(cfg.sink_slots).tolist()[: len(fixed)] == fixed
        assert ctx.clean_sink_ids(cfg.sink_slots).tolist() == fixed + [-1] * (3 - len(fixed))
        sched.commit(i, pages.alloc())
    for i in range(5, 12):
        sched.commit(i, pages.alloc())
    assert pages.refcount(0) == 1, "the fixed sink's page is kept forever"


def test_positions_beyond_1024_frames():
    cfg = _released()
    pages = PageAllocator(cfg.pool_pages)
    sched = ContextScheduler(cfg, pages)
    for i in range(400):
        sched.commit(i, pages.alloc())
    assert pages.in_use == 4, "only the window history holds pages"
    ctx = sched.context(400, 5)
    assert ctx.start_frame == 1200 and ctx.local_starts == [1197, 1194]


def test_query_queue_fixed_shape():
    q = QueryQueue(3, 4)
    feats, valid = q.arrays()
    assert feats.shape == (3, 4) and valid.dtype == np.int32 and valid.tolist() == [0] * 3
    for i in range(5):
        q.push(np.full(4, i, np.float32))
    feats, valid = q.arrays()
    assert valid.tolist() == [1] * 3 and feats[:, 0].tolist() == [2.0, 3.0, 4.0]


def test_pool_exhaustion_is_a_clear_error():
    from dysink_deploy.errors import DysinkError

    pages = PageAllocator(1)
    pages.alloc()
    with pytest.raises(DysinkError, match="exhausted"):
        pages.alloc()
