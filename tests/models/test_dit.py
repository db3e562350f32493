"""The causal DiT: the paged step equals a direct evaluation, shapes, and precision behaviour."""

from __future__ import annotations

import torch

from dysink_deploy.config import model_preset
from dysink_deploy.models.dit import CausalWanDiT, DiTStep, timestep_sinusoid
from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_ref
from dysink_deploy.rope import rope_phases

MODEL = model_preset("tiny")
STREAM = MODEL.default_stream()


def _setup(seed=0):
    torch.manual_seed(seed)
    dit = CausalWanDiT(MODEL.dit).eval()
    tk, tv = dit.text_kv(torch.randn(512, 4096) * 0.2)
    lat_h, lat_w = STREAM.latent_hw
    L = 3 * (lat_h // 2) * (lat_w // 2)
    pools = [torch.randn(STREAM.pool_pages, L, 2, 32) for _ in range(4)]
    return dit, tk, tv, pools, (lat_h, lat_w)


@torch.no_grad()
def test_dit_step_equals_forward_block_with_reference_attention():
    dit, tk, tv, pools, (h, w) = _setup()
    x = torch.randn(16, 3, h, w)
    t = torch.tensor(937.5)
    rope = torch.from_numpy(rope_phases(MODEL.dit, 12, 3, h // 2, w // 2))
    local, sink = torch.tensor([3, 5, -1, -1]), torch.tensor([7, -1])
    step = DiTStep(dit, STREAM)
    x0, k, v, ratios = step(x, t, tk, tv, rope, pools[:2], pools[2:], local, sink)

    def attend(i, q, k_, v_):
        return gated_sink_attention_ref(q, k_, v_, pools[i], pools[2 + i], local, sink, STREAM.gate_threshold,
                                        STREAM.sink_kv_bf16)

    flow, k2, v2, r2 = dit.forward_block(x, t, tk, tv, rope, attend)
    torch.testing.assert_close(x0, x - 0.9375 * flow, rtol=0, atol=1e-6)
    torch.testing.assert_close(k, k2, rtol=0, atol=0)
    assert x0.shape == x.shape and k.shape == (2, 72, 2, 32) and ratios.shape == (2, 2)
    assert ratios[:, 1].abs().sum() == 0, "the empty sink slot reports ratio 0"


def test_sinusoid_is_cos_then_sin():
    e = timestep_sinusoid(torch.tensor([0.0, 1000.0]), 8)
    assert e[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert abs(e[1, 0].item() - torch.cos(torch.tensor(1000.0, dtype=torch.float64)).item()) < 1e-6


@torch.no_grad()
def test_bf16_model_runs_and_keeps_float32_outputs():
    dit, tk, tv, pools, (h, w) = _setup(1)
    dit = dit.to(torch.bfloat16)
    tk, tv = tk.bfloat16(), tv.bfloat16()
    rope = torch.from_numpy(rope_phases(MODEL.dit, 0, 3, h // 2, w // 2))
    x0, k, _, _ = DiTStep(dit, STREAM)(torch.randn(16, 3, h, w), torch.tensor(625.0), tk, tv, rope,
                                       [p.bfloat16() for p in pools[:2]], [p.bfloat16() for p in pools[2:]],
                                       torch.tensor([-1, -1, -1, -1]), torch.tensor([-1, -1]))
    assert x0.dtype == torch.float32 and k.dtype == torch.bfloat16 and torch.isfinite(x0).all()
    # x0 is rounded to the model dtype like the reference's float64 -> bf16 conversion
    torch.testing.assert_close(x0, x0.bfloat16().float(), rtol=0, atol=0)
