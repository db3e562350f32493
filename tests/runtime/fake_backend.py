"""A numpy-only Backend for testing the runtime loop without any framework.

Its "model" is arbitrary but deterministic and reads the pages it is given,
so a wrong page id changes the output.
"""

from __future__ import annotations

import numpy as np

from dysink_deploy.runtime.backends.base import Backend


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, stream, layers: int = 2, feature_dim: int = 8):
        self.stream, self.layers, self._fdim = stream, layers, feature_dim
        self.calls = {"dit_step": 0, "retrieve": 0}

    @property
    def feature_dim(self) -> int:
        return self._fdim

    def start(self, prompt_embeds, num_pages):
        self.pool = np.zeros((num_pages, self.layers, 4), np.float32)
        self.first_seen = None

    def upload(self, array):
        return np.array(array, copy=True)

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        self.calls["dit_step"] += 1
        ctx = sum(self.pool[i].sum() for i in local_ids if i >= 0)
        sinks = np.array([self.pool[i].mean() if i >= 0 else 0.0 for i in sink_ids], np.float32)
        x0 = (0.5 * x + 0.01 * ctx).astype(np.float32)
        k = np.full((self.layers, 4), float(x0.mean()) + t * 1e-3, np.float32)
        ratios = np.tile((np.abs(sinks) * 7 % 1.0)[None, :], (self.layers, 1)).astype(np.float32)
        return x0, k, k * 2, ratios

    def write_page(self, page, k_new, v_new):
        self.pool[page] = k_new

    def renoise(self, x0, eps, sigma):
        return (1 - sigma) * x0 + sigma * eps

    def decode(self, latent, first):
        frames = 1 + 4 * (latent.shape[1] - 1) if first else 4 * latent.shape[1]
        h, w = self.stream.height, self.stream.width
        val = np.tanh(latent.mean(axis=(0, 2, 3)))
        out = np.repeat(val, 4)[-frames:]
        return np.broadcast_to(out[None, :, None, None], (3, frames, h, w)).astype(np.float32)

    def decode_alone(self, latent):
        return self.decode(latent, True)

    def encode(self, frames):
        rng = np.random.Generator(np.random.PCG64(int(abs(frames.mean()) * 1e6) % 1000))
        f = rng.standard_normal(self._fdim).astype(np.float32)
        return f / np.linalg.norm(f)

    def retrieve(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames, sink_size, k):
        self.calls["retrieve"] += 1
        q = queries[np.asarray(query_valid) != 0].mean(0)
        score = bank_feats @ q
        ok = (bank_start >= 0) & ~((bank_start >= current_start - window_frames) & (bank_start < current_start))
        ok &= bank_start >= sink_size
        order = [i for i in np.argsort(-np.where(ok, score, -np.inf), kind="stable") if ok[i]][:k]
        slots = np.full(k, -1, np.int64)
        slots[: len(order)] = order
        return slots, np.where(slots >= 0, score[np.maximum(slots, 0)], 0).astype(np.float32)

    def to_numpy(self, handle):
        return np.asarray(handle)
