"""RetrieveSinks reference: hand-worked bank contents and expected slots, spelled out."""

from __future__ import annotations

import torch

from dysink_deploy.ops.retrieve_sinks import retrieve_sinks, retrieve_sinks_ref


def _unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def _bank():
    # slot:          0        1        2        3        4        5 (empty)
    starts = torch.tensor([0, 3, 6, 9, 12, -1])
    feats = torch.stack([_unit(1, 0, 0), _unit(0.8, 0.6, 0), _unit(1, 0, 0), _unit(0, 1, 0),
                         _unit(0.6, 0.8, 0), torch.zeros(3)])
    return feats, starts


def call(feats, starts, queries, valid, current, window, sink_size=0, k=2):
    return retrieve_sinks_ref(feats, starts, queries, torch.tensor(valid, dtype=torch.int32), torch.tensor(current),
                              torch.tensor(window), sink_size, k)


def test_exclusion_range_is_one_block_wider_than_history():
    feats, starts = _bank()
    q = torch.stack([_unit(1, 0, 0), torch.zeros(3)])
    # Block at frame 15 with window 9: [6, 15) excluded -> slots 2, 3, 4 out; 0 and 1 remain.
    slots, scores = call(feats, starts, q, [True, False], 15, 9)
    assert slots.tolist() == [0, 1]
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.8]))
    # Block at frame 18: [9, 18) excluded -> slot 2 (frame 6) is back and ties slot 0 at 1.0.
    slots, _ = call(feats, starts, q, [True, False], 18, 9)
    assert slots.tolist() == [0, 2], "a tie keeps the lower slot first"


def test_score_is_mean_over_valid_queries():
    feats, starts = _bank()
    q = torch.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(5, 5, 5)])
    slots, scores = call(feats, starts, q, [True, True, False], 30, 9, k=3)
    # mean query (0.5, 0.5, 0): slot 1 and 4 -> 0.7, slots 0, 2, 3 -> 0.5
    assert slots.tolist() == [1, 4, 0]
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.7, 0.5]))


def test_sink_size_and_padding():
    feats, starts = _bank()
    q = torch.stack([_unit(1, 0, 0)])
    # sink_size 3 excludes frame 0; window 12 at frame 15 excludes [3, 15): nothing eligible.
    slots, scores = call(feats, starts, q, [True], 15, 12, sink_size=3, k=2)
    assert slots.tolist() == [-1, -1] and scores.tolist() == [0.0, 0.0]
    # one eligible entry, k = 3: the rest are -1 (empty bank slot 5 never eligible)
    slots, scores = call(feats, starts, q, [True], 15, 9, sink_size=3, k=3)
    assert slots.tolist() == [1, -1, -1]


def test_no_valid_query_means_no_sinks():
    feats, starts = _bank()
    slots, _ = call(feats, starts, torch.zeros(2, 3), [False, False], 30, 9)
    assert slots.tolist() == [-1, -1]


def test_k_larger_than_bank_and_custom_op():
    feats, starts = _bank()
    q = torch.stack([_unit(1, 0, 0)])
    slots, _ = call(feats, starts, q, [True], 100, 9, k=8)
    assert slots.tolist() == [0, 2, 1, 4, 3, -1, -1, -1]
    a = retrieve_sinks(feats, starts, q, torch.tensor([1], dtype=torch.int32), torch.tensor(100), torch.tensor(9), 0, 8)
    assert a[0].tolist() == slots.tolist()
