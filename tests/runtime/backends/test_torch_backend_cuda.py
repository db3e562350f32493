"""On CUDA, a block's denoising steps must not synchronise with the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]


def test_denoising_steps_do_not_sync():
    from dysink_deploy.config import model_preset
    from dysink_deploy.models.factory import build_models
    from dysink_deploy.rope import rope_phases
    from dysink_deploy.runtime.backends.torch_backend import TorchBackend
    from dysink_deploy.runtime.prompts import default_prompt_embeds

    model = model_preset("tiny")
    stream = model.default_stream()
    be = TorchBackend(build_models(model), stream, device="cuda")
    be.start(default_prompt_embeds(model), stream.pool_pages)
    lat_h, lat_w = stream.latent_hw
    x = be.upload(np.random.default_rng(0).standard_normal((16, 3, lat_h, lat_w), dtype=np.float32))
    rope = rope_phases(model.dit, 9, 3, lat_h // 2, lat_w // 2)
    local = np.array([0, 1, -1, -1], np.int64)
    sinks = np.array([2, -1], np.int64)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t, sigma in zip(stream.timesteps(), stream.sigmas()[1:] + [0.0]):
            x0, _, _, _ = be.dit_step(x, t, rope, local, sinks)
            x = be.renoise(x0, x0, sigma)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
