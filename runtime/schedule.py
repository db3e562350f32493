"""Which pages a block attends to, and the retrieval query queue.

Window rule (ALGORITHM.md section 3), with B = block_frames:
  window_frames = local_attn_size + B * max(0, top_k - bank_size)
  The window counts the current block. Fixed-sink frames (the first
  sink_size frames, LongLive's frame sink) are kept forever and count
  against the window, so past local blocks = (window_frames - sink_size)/B - 1,
  most recent first, never repeating a fixed-sink block.
Retrieved sinks come from the bank (see `retrieve_sinks`); this module only
lays out the slots: sink_ids = [fixed sink pages | retrieved pages | -1 ...].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..config import StreamConfig
from .pages import PageAllocator


@dataclass
class BlockContext:
    index: int
    start_frame: int
    window_frames: int
    bank_size: int
    local_pages: list[int]          # past blocks of the window, most recent first
    local_starts: list[int]
    fixed_pages: list[int]
    fixed_starts: list[int]
    retrieved_pages: list[int] = field(default_factory=list)
    retrieved_starts: list[int] = field(default_factory=list)
    retrieved_scores: list[float] = field(default_factory=list)

    def local_ids(self, slots: int) -> np.ndarray:
        return _padded(self.local_pages, slots)

    def sink_ids(self, slots: int) -> np.ndarray:
        return _padded(self.fixed_pages + self.retrieved_pages, slots)

    def clean_sink_ids(self, slots: int) -> np.ndarray:
        """The clean-context pass sees the fixed sink but no retrieved sinks."""
        return _padded(self.fixed_pages, slots)


def _padded(pages: list[int], slots: int) -> np.ndarray:
    if len(pages) > slots:
        raise RuntimeError(f"{len(pages)} pages do not fit in {slots} slots")
    out = np.full(slots, -1, dtype=np.int64)
    out[: len(pages)] = pages
    return out


class ContextScheduler:
    """Keeps the window history's and the fixed sink's page references."""

    def __init__(self, cfg: StreamConfig, pages: PageAllocator):
        self.cfg = cfg
        self.pages = pages
        self.history: deque[tuple[int, int]] = deque()  # (block index, page), oldest first
        self.fixed: list[tuple[int, int]] = []

    def context(self, block_index: int, bank_size: int) -> BlockContext:
        cfg = self.cfg
        b = cfg.block_frames
        start = block_index * b
        wf = cfg.window_frames(bank_size)
        n_local = max(0, (wf - cfg.sink_size) // b - 1)
        fixed_idx = {i for i, _ in self.fixed}
        recent = [(i, p) for i, p in reversed(self.history) if i not in fixed_idx][:n_local]
        return BlockContext(
            index=block_index, start_frame=start, window_frames=wf, bank_size=bank_size,
            local_pages=[p for _, p in recent], local_starts=[i * b for i, _ in recent],
            fixed_pages=[p for _, p in self.fixed], fixed_starts=[i * b for i, _ in self.fixed],
        )

    def commit(self, block_index: int, page: int) -> None:
        """The block's page joins the history (taking over the allocation's reference)."""
        if block_index < self.cfg.fixed_sink_pages:
            self.pages.retain(page)
            self.fixed.append((block_index, page))
        self.history.append((block_index, page))
        while len(self.history) > self.cfg.window_history:
            _, old = self.history.popleft()
            self.pages.release(old)


    def replace_page(self, block_index: int, page: int) -> None:
        """The block's history page becomes `page` (a split after a prompt switch; the caller moved
        the reference)."""
        self.history = deque((i, page if i == block_index else p) for i, p in self.history)


class QueryQueue:
    """Features of the last `length` blocks (stored or not): the retrieval queries."""

    def __init__(self, length: int, feature_dim: int):
        self.length = length
        self._items: deque[np.ndarray] = deque(maxlen=length)
        self.feature_dim = feature_dim

    def push(self, feature: np.ndarray) -> None:
        self._items.append(np.asarray(feature, dtype=np.float32))

    def __len__(self) -> int:
        return len(self._items)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed-shape (queries float32 [length, F], valid int32 [length]: 1 valid, 0 empty) for the
        retrieve op (int32, not bool: the op's TensorRT plugin takes no BOOL input)."""
        q = np.zeros((self.length, self.feature_dim), dtype=np.float32)
        valid = np.zeros(self.length, dtype=np.int32)
        for i, f in enumerate(self._items):
            q[i], valid[i] = f, 1
        return q, valid
