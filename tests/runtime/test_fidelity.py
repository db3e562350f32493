"""Paged runtime vs a naive transcription of the reference loop (tests/naive_dysink.py).

Decisions (window, retrieval set and order, per-layer/per-step gate drops,
dedup) must be identical. Latents: the flash-attention rule of STYLE.md —
the naive loop run in float64 is the reference; the paged runtime's fp32
error against it may be at most 2x the naive fp32 transcription's error.
Thresholds are chosen so that retrieval, gate drops and dedup skips all
happen in these 14 blocks of the tiny model (asserted, so the test cannot
silently stop covering them).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dysink_deploy.config import model_preset
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime.backends.torch_backend import TorchBackend
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer, frames_to_uint8
from tests.naive_dysink import NaiveDySink

BLOCKS = 14


def _run(stream_overrides: dict, blocks: int):
    model = model_preset("tiny")
    stream = model.default_stream(**stream_overrides)
    models = build_models(model, seed=0)
    prompt = default_prompt_embeds(model)
    records = list(Streamer(TorchBackend(models, stream), model.dit, stream, prompt, seed=0).blocks(blocks))
    naive32 = NaiveDySink(models, stream, prompt, seed=0)
    naive64 = NaiveDySink(copy.deepcopy(models).double(), stream, prompt, seed=0)
    for i in range(blocks):
        naive32.block(i)
        naive64.block(i)
    return records, naive32, naive64


@pytest.fixture(scope="module")
def released():
    """The released config (sink 0, top-k 2, gate 0.8) with dedup 0.985 so the bank grows and skips."""
    return _run({"dedup_threshold": 0.985, "gate_threshold": 0.8, "bank_capacity": 16}, BLOCKS)


def _assert_same_decisions(records, naive):
    for r, n in zip(records, naive.log):
        where = f"block {r.index}"
        assert r.window_frames == n["window_frames"], where
        assert r.bank_size == n["bank_size"], where
        assert [x["start_frame"] for x in r.retrieved] == n["retrieved"], where
        np.testing.assert_allclose([x["score"] for x in r.retrieved], n["scores"], atol=1e-5, err_msg=where)
        assert [g["dropped"] for g in r.gate] == n["dropped"], where
        np.testing.assert_allclose(np.array([g["ratios"] for g in r.gate]).reshape(-1),
                                   np.array(n["ratios"]).reshape(-1), atol=1e-6, err_msg=where)
        assert [g["dropped"] for g in r.fixed_sink_gate] == n["fixed_dropped"], where
        assert r.stored == n["stored"], where


def test_decisions_identical_to_naive_reference(released):
    records, naive32, naive64 = released
    _assert_same_decisions(records, naive32)
    _assert_same_decisions(records, naive64)   # and to the float64 run: no decision sits on a rounding edge


def test_every_mechanism_is_exercised(released):
    records, _, _ = released
    cells = [c for r in records for g in r.gate for step in g["dropped"] for c in step]
    assert any(r.retrieved for r in records), "no retrieval happened"
    assert any(cells) and not all(cells), "need both gate drops and kept sinks"
    assert any(not r.stored for r in records[1:]), "no dedup skip happened"
    assert sum(r.stored for r in records) >= 3, "the bank should grow past top_k"
    assert [r.window_frames for r in records[:3]] == [15, 12, 9], "window growth while the bank is small"


def test_latents_within_measured_tolerance(released):
    records, naive32, naive64 = released
    ours = max(float(np.abs(r.latent - n["latent"]).max()) for r, n in zip(records, naive64.log))
    base = max(float(np.abs(a["latent"] - n["latent"]).max()) for a, n in zip(naive32.log, naive64.log))
    assert base > 0, "the float64 run must differ from fp32 somewhere, or the baseline means nothing"
    assert ours <= 2 * base, f"runtime error {ours:.3g} > 2 x naive fp32 error {base:.3g}"


def test_features_within_measured_tolerance(released):
    records, naive32, naive64 = released
    ours = max(float(np.abs(r.feature - n["feature"]).max()) for r, n in zip(records, naive64.log))
    base = max(float(np.abs(a["feature"] - n["feature"]).max()) for a, n in zip(naive32.log, naive64.log))
    assert ours <= 2 * base + 1e-7, f"feature error {ours:.3g} vs naive fp32 {base:.3g}"


def test_streamed_frames_match_one_call_decode(released):
    """Frames written block by block equal the reference's decode of the whole video (8-bit)."""
    records, naive32, naive64 = released
    ours = np.concatenate([r.frames for r in records]).astype(int)
    ref = frames_to_uint8(naive64.video()).astype(int)
    base = frames_to_uint8(naive32.video()).astype(int)
    assert ours.shape == ref.shape == (9 + 12 * (BLOCKS - 1), 64, 96, 3)
    # fp32 rounding may move a value across an 8-bit rounding boundary: one level, rarely.
    assert np.abs(ours - ref).max() <= 1
    assert (ours != ref).mean() <= 2 * max((base != ref).mean(), 1e-4)


def test_fixed_sink_fidelity():
    """sink_size = 3 (LongLive's baseline): fixed sink gated in every pass, never bf16-rounded."""
    records, naive32, naive64 = _run({"sink_size": 3, "dedup_threshold": 0.985, "gate_threshold": 0.5,
                                      "bank_capacity": 16}, 8)
    _assert_same_decisions(records, naive32)
    assert all(r.fixed_sink_gate for r in records[1:]), "the fixed sink should be present from block 1"
    cells = [c for r in records for g in r.fixed_sink_gate for step in g["dropped"] for c in step]
    assert any(cells) and not all(cells), "need both kept and dropped fixed-sink decisions"
    ours = max(float(np.abs(r.latent - n["latent"]).max()) for r, n in zip(records, naive64.log))
    base = max(float(np.abs(a["latent"] - n["latent"]).max()) for a, n in zip(naive32.log, naive64.log))
    assert ours <= 2 * base, f"runtime error {ours:.3g} > 2 x naive fp32 error {base:.3g}"


def test_negative_dedup_threshold_follows_the_reference():
    """dedup -0.02: the reference floors the similarity at 0, so once the bank holds an entry every
    later block is skipped (0 > -0.02) whatever its cosine; the stream stays on the naive run."""
    records, naive32, _ = _run({"dedup_threshold": -0.02, "gate_threshold": 0.8, "bank_capacity": 16}, 5)
    _assert_same_decisions(records, naive32)
    assert [r.stored for r in records] == [True, False, False, False, False]
    for r, n in zip(records, naive32.log):
        assert (r.max_similarity is None) == (n["max_similarity"] is None)
        if r.max_similarity is not None:
            assert r.max_similarity >= 0.0
            assert r.max_similarity == pytest.approx(n["max_similarity"], abs=1e-6)
