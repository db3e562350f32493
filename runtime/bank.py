"""The memory bank: block features and the pool pages holding their K/V.

Reference behaviour (unbounded bank): after each block, if the bank is not
empty and max(0, max_j cos(f, f_j)) > dedup_threshold the block is not
stored (keep-the-older); otherwise {start frame, feature, K/V page} is
appended. The 0 floor is the reference's (its running maximum starts at
0.0), and it matters for a negative threshold: a non-empty bank whose best
cosine is -0.3 still counts as similarity 0 > -0.02, and the block is skipped.

Bounded (ours): the bank has `capacity` slots. While it is not full every
decision equals the reference's. When a block must be stored into a full
bank, one entry is evicted first:
  - "lru"  (default): the entry retrieved least recently; an entry never
    retrieved counts as retrieved when it was stored. Ties: the older entry.
  - "fifo": the oldest entry (smallest start frame).
Dedup compares against the entries currently in the bank, so an evicted
entry no longer blocks a similar block from being stored.
"""

from __future__ import annotations

import numpy as np


class MemoryBank:
    def __init__(self, capacity: int, feature_dim: int, eviction: str = "lru"):
        if eviction not in ("lru", "fifo"):
            raise ValueError(f"unknown eviction rule {eviction!r}")
        self.capacity = capacity
        self.eviction = eviction
        self.feats = np.zeros((capacity, feature_dim), dtype=np.float32)
        self.start = np.full(capacity, -1, dtype=np.int64)   # -1 = empty slot
        self.page = np.full(capacity, -1, dtype=np.int64)
        self.last_used = np.full(capacity, -1, dtype=np.int64)  # block index of last retrieval/store
        # Each entry's clean latent block, kept for the recache of a prompt switch (one per entry:
        # bounded like the bank; the reference keeps the same per entry).
        self.latents: list[np.ndarray | None] = [None] * capacity

    @property
    def size(self) -> int:
        return int((self.start >= 0).sum())

    def max_similarity(self, feature: np.ndarray) -> float | None:
        """max(0, highest cosine between a unit feature and the stored ones), as the reference
        computes it (float32 dot products, a running maximum from 0.0); None if the bank is empty."""
        used = self.start >= 0
        if not used.any():
            return None
        return max(0.0, float((self.feats[used] @ feature.astype(np.float32)).max()))

    def is_duplicate(self, feature: np.ndarray, threshold: float) -> tuple[bool, float | None]:
        sim = self.max_similarity(feature)
        return (sim is not None and sim > threshold), sim

    def _victim(self) -> int:
        used = np.flatnonzero(self.start >= 0)
        if self.eviction == "fifo":
            return int(used[np.argmin(self.start[used])])
        # lexsort: last key is primary -> least recently used, then oldest start.
        order = np.lexsort((self.start[used], self.last_used[used]))
        return int(used[order[0]])

    def add(self, start_frame: int, feature: np.ndarray, page: int, block_index: int,
            latent: np.ndarray | None = None) -> tuple[int, int] | None:
        """Store an entry; returns (start_frame, page) of the evicted entry, if any."""
        evicted = None
        free = np.flatnonzero(self.start < 0)
        if free.size:
            slot = int(free[0])
        else:
            slot = self._victim()
            evicted = (int(self.start[slot]), int(self.page[slot]))
        self.feats[slot] = feature
        self.start[slot] = start_frame
        self.page[slot] = page
        self.last_used[slot] = block_index
        self.latents[slot] = latent
        return evicted

    def mark_retrieved(self, slots: np.ndarray, block_index: int) -> None:
        for s in slots:
            if s >= 0:
                self.last_used[int(s)] = block_index

    def used_slots(self) -> list[int]:
        """Occupied slots in insertion order (by start frame: blocks are stored in stream order)."""
        used = np.flatnonzero(self.start >= 0)
        return [int(s) for s in used[np.argsort(self.start[used], kind="stable")]]

    def entries(self) -> list[tuple[int, int]]:
        """(start_frame, page) of the stored entries, oldest first."""
        used = np.flatnonzero(self.start >= 0)
        return sorted((int(self.start[s]), int(self.page[s])) for s in used)
