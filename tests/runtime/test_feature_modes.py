"""Both retrieval-feature modes (ALGORITHM.md section 8) on the torch backend."""

from __future__ import annotations

import numpy as np

from dysink_deploy.config import model_preset
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime.backends.torch_backend import TorchBackend
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer


class CountingBackend(TorchBackend):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.alone = 0

    def decode_alone(self, latent):
        self.alone += 1
        return super().decode_alone(latent)


def _run(mode: str, blocks: int = 3):
    model = model_preset("tiny")
    stream = model.default_stream(feature_mode=mode)
    be = CountingBackend(build_models(model, seed=0), stream)
    recs = list(Streamer(be, model.dit, stream, default_prompt_embeds(model), seed=0).blocks(blocks))
    return recs, be.alone


def test_block_alone_and_streamed_features():
    alone, n_alone = _run("block-alone")
    streamed, n_streamed = _run("streamed")
    assert n_alone == 3 and n_streamed == 0, "streamed mode reuses the streamed frames: one decode per block"
    # Block 0: the streamed decode IS the block-alone decode (first-frame rule, zero history).
    np.testing.assert_allclose(alone[0].feature, streamed[0].feature, atol=1e-6)
    # Later blocks: the streamed frames carry the VAE's temporal context (12 frames, not 9): other features.
    assert np.abs(alone[1].feature - streamed[1].feature).max() > 1e-4
    for r in alone + streamed:
        assert abs(np.linalg.norm(r.feature) - 1.0) < 1e-5
    # The latents of block 0 do not depend on the mode (it has no bank yet).
    np.testing.assert_array_equal(alone[0].latent, streamed[0].latent)
