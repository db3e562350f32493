"""Memory bank: dedup keep-the-older (strict >) and the two eviction rules, spelled out."""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy.runtime.bank import MemoryBank


def unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0], dtype=np.float32)


def test_dedup_is_strict_and_keeps_the_older():
    bank = MemoryBank(4, 3)
    assert bank.is_duplicate(unit(0), 0.95) == (False, None)  # empty bank: always stored
    bank.add(0, unit(0), page=7, block_index=0)
    cos_10 = float(np.cos(np.deg2rad(10)))                      # 0.9848
    dup, sim = bank.is_duplicate(unit(10), 0.95)
    assert dup and sim == pytest.approx(cos_10, abs=1e-6)
    dup, _ = bank.is_duplicate(unit(10), cos_10 + 1e-4)          # just above the similarity: stored
    assert not dup
    # exactly at the threshold is not a duplicate (strict >)
    f = unit(30)
    exact = float(bank.feats[0] @ f)
    assert not bank.is_duplicate(f, exact)[0]
    assert bank.entries() == [(0, 7)], "the older entry stays; the duplicate is not stored"


def _filled(eviction: str) -> MemoryBank:
    bank = MemoryBank(3, 3, eviction)
    bank.add(0, unit(0), page=10, block_index=0)     # A
    bank.add(3, unit(40), page=11, block_index=1)    # B
    bank.add(6, unit(80), page=12, block_index=2)    # C
    return bank


def test_lru_evicts_least_recently_retrieved():
    bank = _filled("lru")
    bank.mark_retrieved(np.array([0, -1]), block_index=3)      # A retrieved at block 3
    evicted = bank.add(9, unit(120), page=13, block_index=4)   # D: B (last used 1) goes
    assert evicted == (3, 11)
    assert bank.entries() == [(0, 10), (6, 12), (9, 13)]
    bank.mark_retrieved(np.array([2]), block_index=5)          # C retrieved at 5 -> slot 2
    evicted = bank.add(12, unit(160), page=14, block_index=6)  # A (3) vs D (4) vs C (5): A goes
    assert evicted == (0, 10)


def test_lru_tie_evicts_the_older_entry():
    bank = MemoryBank(2, 3, "lru")
    bank.add(6, unit(0), page=1, block_index=5)
    bank.add(3, unit(90), page=2, block_index=5)
    assert bank.add(9, unit(45), page=3, block_index=6) == (3, 2)


def test_fifo_evicts_the_oldest():
    bank = _filled("fifo")
    bank.mark_retrieved(np.array([0]), block_index=3)          # retrieval does not matter for fifo
    assert bank.add(9, unit(120), page=13, block_index=4) == (0, 10)
    assert bank.add(12, unit(160), page=14, block_index=5) == (3, 11)
    assert bank.size == 3


def test_similarity_is_floored_at_zero_like_the_reference():
    """Worked by hand: one entry at 0 degrees; a block at 120 degrees has cosine -0.5. The reference's
    running maximum starts at 0.0, so it reports max(0, -0.5) = 0: with threshold -0.02 the block is a
    duplicate (0 > -0.02) and is not stored, although its true cosine (-0.5) is below the threshold."""
    bank = MemoryBank(4, 3)
    bank.add(0, unit(0), page=1, block_index=0)
    assert float(bank.feats[0] @ unit(120)) == pytest.approx(-0.5, abs=1e-6)
    dup, sim = bank.is_duplicate(unit(120), -0.02)
    assert sim == 0.0 and dup
    # Two entries at 0 and 100 degrees: cosines -0.5 and 0.940 -> 0.940 (the floor does not apply).
    bank.add(3, unit(100), page=2, block_index=1)
    dup, sim = bank.is_duplicate(unit(120), 0.5)
    assert sim == pytest.approx(float(np.cos(np.deg2rad(20))), abs=1e-6) and dup
    # Threshold 0 (not negative): similarity 0 is not > 0, so an orthogonal-or-worse block is stored.
    lone = MemoryBank(2, 3)
    lone.add(0, unit(0), page=1, block_index=0)
    assert lone.is_duplicate(unit(150), 0.0) == (False, 0.0)
    # The empty bank still stores whatever the threshold.
    assert MemoryBank(2, 3).is_duplicate(unit(0), -1.0) == (False, None)
