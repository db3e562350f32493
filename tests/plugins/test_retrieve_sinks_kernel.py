"""Triton RetrieveSinks (interpreted on CPU) against the PyTorch reference and hand-worked banks.

Slots must be identical. Scores: the flash-attention rule against a float64
evaluation (kernel error <= 2x the float32 reference's own error, plus one
float32 ulp of the score scale for the case where the reference happens to be
exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dysink_deploy.errors import DysinkError
from dysink_deploy.ops.retrieve_sinks import retrieve_sinks_ref
from dysink_deploy.plugins import launch


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def _flags(*values):
    """query_valid as the contract has it: int32, 1 valid, 0 not."""
    return torch.tensor(values, dtype=torch.int32)


def _scores64(feats, queries, valid):
    valid = valid != 0
    q = (queries.double() * valid.double()[:, None]).sum(0) / valid.double().sum().clamp(min=1)
    return feats.double() @ q


def _check(feats, start, queries, valid, cur, win, sink_size, k):
    slots, scores = launch.retrieve_sinks(feats, start, queries, valid, torch.tensor(cur), torch.tensor(win),
                                          sink_size, k)
    ref_slots, ref_scores = retrieve_sinks_ref(feats, start, queries, valid, torch.tensor(cur), torch.tensor(win),
                                               sink_size, k)
    assert slots.dtype == torch.int64 and scores.dtype == torch.float32
    assert slots.tolist() == ref_slots.tolist()
    exact = _scores64(feats, queries, valid)
    found = slots >= 0
    exact_top = torch.where(found, exact[slots.clamp(min=0)], torch.zeros((), dtype=torch.float64))
    err = (scores.double() - exact_top).abs().max().item()
    ref_err = (ref_scores.double() - exact_top).abs().max().item()
    assert err <= 2 * ref_err + 2 ** -24, f"score error {err:.3g} vs reference {ref_err:.3g}"
    assert (scores[~found] == 0).all()
    return slots.tolist()


@pytest.mark.parametrize("capacity, k", [(40, 5), (1024, 8), (3, 2)])
def test_random_banks(capacity, k):
    g = torch.Generator().manual_seed(capacity)
    feats = _unit(torch.randn(capacity, 512, generator=g))
    start = torch.arange(capacity) * 3
    start[::7] = -1                                     # some empty slots
    queries = _unit(torch.randn(3, 512, generator=g))
    valid = torch.tensor([1, 0, 1], dtype=torch.int32)
    _check(feats, start, queries, valid, 3 * capacity, 9, 0, k)


def test_hand_worked_exclusions_ties_and_padding():
    """6 slots, 4-d features, one query (1, 0, 0, 0): score = first component.

    slot  start  feat[0]  eligible?  (current_start 30, window 9 -> excluded [21, 30); sink_size 3)
    0     0      0.9      no: below sink_size
    1     3      0.5      yes
    2     24     0.99     no: inside [21, 30)
    3     -1     0.95     no: empty slot
    4     18     0.5      yes (ties with slot 1: the lower slot first)
    5     21     0.7      no: 21 is the first excluded frame
    -> top 4: slots [1, 4, -1, -1], scores [0.5, 0.5, 0, 0]
    """
    feats = torch.zeros(6, 4)
    feats[:, 0] = torch.tensor([0.9, 0.5, 0.99, 0.95, 0.5, 0.7])
    start = torch.tensor([0, 3, 24, -1, 18, 21])
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    valid = torch.tensor([1, 0], dtype=torch.int32)
    slots, scores = launch.retrieve_sinks(feats, start, queries, valid, torch.tensor(30), torch.tensor(9), 3, 4)
    assert slots.tolist() == [1, 4, -1, -1]
    assert scores.tolist() == [0.5, 0.5, 0.0, 0.0]


def test_no_valid_query_retrieves_nothing():
    feats = _unit(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
    slots, scores = launch.retrieve_sinks(feats, torch.arange(5) * 3, feats[:2], _flags(0, 0),
                                          100, 9, 0, 2)
    assert slots.tolist() == [-1, -1] and scores.tolist() == [0.0, 0.0]


def test_every_slot_empty_and_k_beyond_capacity():
    feats = torch.zeros(4, 8)
    slots, _ = launch.retrieve_sinks(feats, torch.full((4,), -1), torch.ones(1, 8), _flags(1), 12, 9, 0, 2)
    assert slots.tolist() == [-1, -1]
    slots = _check(feats + 1, torch.arange(4) * 3, torch.ones(1, 8), _flags(1), 100, 9, 0, 6)
    assert slots[4:] == [-1, -1]


def test_scalars_stay_tensors():
    """current_start / window_frames may be 0-d device tensors (no host read) or plain ints."""
    feats = _unit(torch.randn(10, 16, generator=torch.Generator().manual_seed(2)))
    start = torch.arange(10) * 3
    a = launch.retrieve_sinks(feats, start, feats[:3], _flags(1, 1, 1), torch.tensor(30), torch.tensor(9), 0, 3)
    b = launch.retrieve_sinks(feats, start, feats[:3], _flags(1, 1, 1), 30, 9, 0, 3)
    assert a[0].tolist() == b[0].tolist()
    # numpy integers (as read from a config array) are integers too; a one-entry bank and k=1
    # (a value Triton's JIT would otherwise specialize) work.
    c = launch.retrieve_sinks(feats, start, feats[:3], _flags(1, 1, 1), 30, 9, np.int64(0), np.int64(3))
    assert c[0].tolist() == a[0].tolist()
    slots = _check(feats[:1], start[:1], feats[:1], _flags(1), 30, 9, 0, 1)
    assert slots == [0]


@pytest.mark.parametrize("capacity, k, message", [(1025, 2, "capacity up to 1024"), (16, 9, "top_k up to 8"),
                                                  (16, 0, "k must be an integer >= 1"),
                                                  (16, 2.0, "k must be an integer >= 1"),
                                                  (16, True, "k must be an integer >= 1")])
def test_limits_are_clear_errors(capacity, k, message):
    with pytest.raises(DysinkError, match=message):
        launch.retrieve_sinks(torch.zeros(capacity, 8), torch.zeros(capacity, dtype=torch.int64), torch.zeros(1, 8),
                              _flags(1), 0, 9, 0, k)


def test_bad_dtypes_are_clear_errors():
    """query_valid is int32: a bool (what bundles before format 4 fed) or int64 mask is refused, not
    reinterpreted (the kernel reads 4-byte words)."""
    for wrong in (torch.tensor([True]), torch.tensor([1])):
        with pytest.raises(DysinkError, match=r"query_valid must be int32 \[1\] \(1 valid, 0 not\), got torch\."):
            launch.retrieve_sinks(torch.zeros(4, 8), torch.zeros(4, dtype=torch.int64), torch.zeros(1, 8),
                                  wrong, 0, 9, 0, 2)
    with pytest.raises(DysinkError, match="bank_start must be int64"):
        launch.retrieve_sinks(torch.zeros(4, 8), torch.zeros(4, dtype=torch.int32), torch.zeros(1, 8),
                              _flags(1), 0, 9, 0, 2)


def test_query_valid_any_nonzero_counts_once():
    """The int32 flags: 0 = empty queue slot, anything else valid with weight 1, as in the reference."""
    g = torch.Generator().manual_seed(4)
    feats = _unit(torch.randn(20, 16, generator=g))
    queries = _unit(torch.randn(4, 16, generator=g))
    start = torch.arange(20) * 3
    ones = _check(feats, start, queries, _flags(1, 0, 1, 1), 90, 9, 0, 4)
    assert _check(feats, start, queries, _flags(7, 0, -1, 1), 90, 9, 0, 4) == ones
