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


def _reference_table(shift: float):
    """The reference's computation, literally, in torch: FlowMatchScheduler(shift, sigma_min=0.0,
    extra_one_step=True).set_timesteps(1000), then warp_denoising_step's lookup."""
    torch = pytest.importorskip("torch")
    sigma_min, sigma_max = 0.0, 1.0
    sigma_start = sigma_min + (sigma_max - sigma_min) * 1.0
    sigmas = torch.linspace(sigma_start, sigma_min, 1000 + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = sigmas * 1000
    warped = torch.cat((timesteps, torch.tensor([0], dtype=torch.float32)))
    return sigmas, timesteps, warped


@pytest.mark.parametrize("shift", [5.0, 3.0, 1.0, 7.3])
def test_every_step_matches_the_reference_table(shift):
    sigmas, timesteps, warped = _reference_table(shift)
    steps = tuple(range(1000, 0, -1))
    s = StreamConfig(denoising_steps=steps, shift=shift)
    expect_t = [float(warped[1000 - k]) for k in steps]
    assert s.timesteps() == expect_t            # bit for bit, all 1000 steps
    # add_noise looks the sigma up by the nearest table timestep: the table's own sigma.
    for k, t, sig in zip(steps, s.timesteps(), s.sigmas()):
        index = int(((timesteps - t).abs()).argmin())
        assert index == 1000 - k and sig == float(sigmas[index]), k


@pytest.mark.parametrize("steps", [(1000, 800, 600, 400, 200), (999, 500, 1), (937, 813, 211), (1000,)])
def test_non_released_step_lists(steps):
    _, _, warped = _reference_table(5.0)
    s = StreamConfig(denoising_steps=steps)
    assert s.timesteps() == [float(warped[1000 - k]) for k in steps]


def test_hand_worked_entries():
    # step 1000: s = 1 exactly -> sigma = 5 / 5 = 1 -> t = 1000; step 500: s = 0.5 (0.001f * 500 rounds
    # to 0.5) -> sigma = 2.5 / 3 = 0.8333333 -> t = 833.3333129882812 (float32 of 833.33331...).
    s = StreamConfig(denoising_steps=(1000, 500))
    assert s.timesteps() == [1000.0, 833.3333129882812]
    assert s.sigmas() == [1.0, float(__import__("numpy").float32(2.5) / __import__("numpy").float32(3.0))]
    # shift 1: no warp, t = 1000 * s; s at step 250 is 0.001f * 250 rounded once = 0.25 -> 250.0.
    assert StreamConfig(denoising_steps=(250,), shift=1.0).timesteps() == [250.0]
