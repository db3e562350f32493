"""Config dataclasses fail on construction with messages naming the fields."""

from __future__ import annotations

import pytest

from dysink_deploy.config import (DIT_PRESETS, MODEL_PRESETS, DiTConfig, StreamConfig, model_config_from_dict,
                                  model_preset, stream_config_from_dict)
from dysink_deploy.errors import ConfigError


def test_released_defaults():
    s = StreamConfig()
    assert (s.block_frames, s.local_attn_size, s.sink_size, s.top_k) == (3, 9, 0, 2)
    assert (s.gate_threshold, s.dedup_threshold, s.shift) == (0.8, 0.95, 5.0)
    assert s.denoising_steps == (1000, 750, 500, 250)
    assert s.timesteps() == [1000.0, 937.5, 833.3333129882812, 625.0]
    assert (s.height, s.width, s.latent_hw) == (480, 832, (60, 104))


@pytest.mark.parametrize("kw, fields", [
    ({"local_attn_size": 10}, ["local_attn_size", "block_frames"]),
    ({"top_k": -1}, ["top_k"]),
    ({"sink_size": 2}, ["sink_size", "block_frames"]),
    ({"gate_threshold": -0.1}, ["gate_threshold"]),
    ({"dedup_threshold": 1.5}, ["dedup_threshold"]),
    ({"denoising_steps": (750, 1000)}, ["denoising_steps"]),
    ({"denoising_steps": ()}, ["denoising_steps"]),
    ({"shift": 0}, ["shift"]),
    ({"width": 100}, ["width"]),
    ({"bank_capacity": 0}, ["bank_capacity"]),
    ({"bank_capacity": 3, "top_k": 4}, ["bank_capacity", "top_k"]),
    ({"eviction": "random"}, ["eviction"]),
    ({"feature_mode": "clip"}, ["feature_mode"]),
    ({"block_frames": True}, ["block_frames"]),
])
def test_stream_config_rejects(kw, fields):
    with pytest.raises(ConfigError) as exc:
        StreamConfig(**kw)
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fields:
        assert f"StreamConfig.{f}" in msg, msg


def test_dit_config_rejects():
    with pytest.raises(ConfigError, match=r"DiTConfig.dim \(100\) must be divisible by DiTConfig.heads \(3\)"):
        DiTConfig(dim=100, heads=3)
    with pytest.raises(ConfigError, match="DiTConfig.patch"):
        DiTConfig(patch=(1, 2))
    with pytest.raises(ConfigError, match="DiTConfig.layers"):
        DiTConfig(layers=0)


def test_presets_and_dict_round_trips():
    with pytest.raises(ConfigError, match="unknown model preset 'big'"):
        model_preset("big")
    for m in MODEL_PRESETS.values():
        assert model_config_from_dict(m.to_dict()) == m
        assert stream_config_from_dict(m.default_stream().to_dict()) == m.default_stream()
    with pytest.raises(ConfigError, match="unknown stream setting"):
        stream_config_from_dict({"topk": 2})
    assert DIT_PRESETS["wan2.1-t2v-1.3b"].rope_split == (22, 21, 21)


def test_derived_slots():
    s = StreamConfig(bank_capacity=8, sink_size=3)
    assert (s.local_slots, s.sink_slots, s.queue_len) == (4, 3, 3)
    assert s.pool_pages == 8 + 4 + 1 + 1
