"""A naive transcription of the reference DySink loop, for tests only.

Written from ALGORITHM.md and the reference's structure, deliberately NOT
from our runtime: K/V of past blocks live in a Python list and are
concatenated per layer like the original cache, the memory bank is an
unbounded host-side list in insertion order, every gate decision is read to
the host with `.item()`, the gate score is the reference's "mean over keys
of <qbar, k>" (not <qbar, mean k>), and the video is decoded in one call at
the end. It shares only the network modules (weights) and the seeded noise.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from dysink_deploy.config import StreamConfig
from dysink_deploy.rope import rope_phases
from dysink_deploy.runtime.noise import block_noise


class NaiveDySink:
    def __init__(self, models, stream: StreamConfig, prompt_embeds: np.ndarray, seed: int,
                 local_first: bool = False, noise=None, features=None, prompts=None):
        # local_first: concatenate [local | sinks] instead of [sinks | local]. Same
        # math, another float summation order: the tests' tolerance baseline.
        # noise(index, shape, steps) / features(index, latent): replace the seeded noise and the
        # block-alone decode + PE-Core feature (what the public API lets a caller inject).
        self.m, self.cfg, self.seed, self.local_first = models, stream, seed, local_first
        self.noise, self.features = noise, features
        # prompts: [(latent frame, embeddings)] switches, the interactive pipeline's way (section 9).
        self.prompts = list(prompts or [])
        self.switch_log: list[dict] = []
        self.dtype = models.dit.patch_embedding.weight.dtype
        with torch.no_grad():
            self.text_k, self.text_v = models.dit.text_kv(torch.from_numpy(prompt_embeds).to(self.dtype))
        self.cache: list[dict] = []      # every block's clean-pass K/V, in order
        self.bank: list[dict] = []       # {start, feat, k, v}, insertion order, unbounded
        self.queue: deque = deque(maxlen=stream.local_attn_size // stream.block_frames)
        self.latents: list[torch.Tensor] = []
        self.log: list[dict] = []

    # -- attention of one layer, the reference way ----------------------------
    def _attend(self, layer, q, k, v, local_blocks, fixed_blocks, sinks, gate_log):
        cfg = self.cfg
        local_k = torch.cat([b["k"][layer] for b in local_blocks] + [k])
        local_v = torch.cat([b["v"][layer] for b in local_blocks] + [v])
        acc = torch.promote_types(q.dtype, torch.float32)                  # float64 for the exact run
        qbar = q.to(acc).mean(0)                                           # [H, D]

        def score(keys):                                                   # mean over keys of <qbar, k>
            return torch.einsum("hd,khd->hk", qbar, keys.to(acc)).mean(-1)

        s_loc = score(local_k)
        kept_k, kept_v, decisions = [], [], []
        entries = [(b["k"][layer], b["v"][layer], False) for b in fixed_blocks] + \
                  [(e["k"][layer], e["v"][layer], True) for e in sinks]
        for ek, ev, retrieved in entries:
            if retrieved and cfg.sink_kv_bf16:
                ek, ev = ek.to(torch.bfloat16).to(ek.dtype), ev.to(torch.bfloat16).to(ev.dtype)
            ratio = (score(ek) > s_loc).to(acc).mean().item()
            dropped = ratio > cfg.gate_threshold
            decisions.append((ratio, dropped))
            if not dropped:
                kept_k.append(ek)
                kept_v.append(ev)
        gate_log.append(decisions)
        parts_k, parts_v = (([local_k] + kept_k, [local_v] + kept_v) if self.local_first
                            else (kept_k + [local_k], kept_v + [local_v]))
        keys, vals = torch.cat(parts_k).to(acc), torch.cat(parts_v).to(acc)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q.to(acc), keys) / q.shape[-1] ** 0.5, dim=-1)
        return torch.einsum("hqk,khd->qhd", att, vals).to(q.dtype), None

    def _plain(self, q, k, v):
        """Attention of every query over every key of this forward (no cache, no sinks)."""
        acc = torch.promote_types(q.dtype, torch.float32)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q.to(acc), k.to(acc)) / q.shape[-1] ** 0.5, dim=-1)
        return torch.einsum("hqk,khd->qhd", att, v.to(acc)).to(q.dtype), None

    @torch.no_grad()
    def _switch(self, index: int, embeds: np.ndarray) -> None:
        cfg, dit = self.cfg, self.m.dit
        b = cfg.block_frames
        start = index * b
        lat_h, lat_w = cfg.latent_hw
        self.text_k, self.text_v = dit.text_kv(torch.from_numpy(embeds).to(self.dtype))
        zero = torch.tensor(0.0)
        # (1) every bank entry: its own latent block alone, at its own positions, t = 0.
        for e in self.bank:
            rope = torch.from_numpy(rope_phases(dit.cfg, e["start"], b, lat_h // 2, lat_w // 2))
            _, k, v, _ = dit.forward_block(e["latent"], zero, self.text_k, self.text_v, rope,
                                           lambda i, q, k_, v_: self._plain(q, k_, v_))
            e["k"], e["v"] = list(k), list(v)           # rebinding: the window's copy is not touched
        # (2) the window: one pass over the last min(window, start) frames, all seeing all.
        window = cfg.local_attn_size + b * max(0, cfg.top_k - len(self.bank))
        n = min(window, start)
        if n:
            x = torch.cat(self.latents[-(n // b):], dim=1)
            rope = torch.from_numpy(rope_phases(dit.cfg, start - n, n, lat_h // 2, lat_w // 2))
            _, k, v, _ = dit.forward_block(x, zero, self.text_k, self.text_v, rope,
                                           lambda i, q, k_, v_: self._plain(q, k_, v_))
            per = k.shape[1] // (n // b)
            for j in range(n // b):
                pos = len(self.cache) - n // b + j
                self.cache[pos] = {"start": self.cache[pos]["start"],
                                   "k": [kl[j * per:(j + 1) * per] for kl in k],
                                   "v": [vl[j * per:(j + 1) * per] for vl in v]}
        self.switch_log.append({"block": index, "entries": len(self.bank), "frames": n})

    @torch.no_grad()
    def block(self, index: int) -> dict:
        cfg, dit = self.cfg, self.m.dit
        b = cfg.block_frames
        start = index * b
        if self.prompts and start >= self.prompts[0][0]:          # at most one switch per block
            self._switch(index, self.prompts.pop(0)[1])
        window = cfg.local_attn_size + b * max(0, cfg.top_k - len(self.bank))

        # Retrieval: mean of cosines over the queue, exclusion [start - window, start) and < sink_size.
        sinks, scores = [], []
        if cfg.top_k and self.queue and self.bank:
            qs = torch.stack([torch.from_numpy(f) for f in self.queue])
            cand = []
            for j, e in enumerate(self.bank):
                if start - window <= e["start"] < start or e["start"] < cfg.sink_size:
                    continue
                s = torch.stack([torch.dot(torch.from_numpy(e["feat"]), qf) for qf in qs]).mean().item()
                cand.append((s, j))
            cand.sort(key=lambda c: (-c[0], c[1]))
            for s, j in cand[: cfg.top_k]:
                sinks.append(self.bank[j])
                scores.append(s)

        fixed = [blk for blk in self.cache if blk["start"] < cfg.sink_size]
        non_fixed = [blk for blk in self.cache if blk["start"] >= cfg.sink_size]
        n_local = max(0, (window - cfg.sink_size) // b - 1)
        local = non_fixed[-n_local:] if n_local else []

        lat_h, lat_w = cfg.latent_hw
        shape = (dit.cfg.in_dim, b, lat_h, lat_w)
        rope = torch.from_numpy(rope_phases(dit.cfg, start, b, lat_h // 2, lat_w // 2))
        x_np, eps = (self.noise or (lambda i, sh, n: block_noise(self.seed, i, sh, n)))(
            index, shape, len(cfg.denoising_steps))
        x = torch.from_numpy(x_np).to(self.dtype)
        ts, sig = cfg.timesteps(), cfg.sigmas()
        step_logs = []
        x0 = None
        for s_i, t in enumerate(ts):
            layer_logs: list = []
            flow, _, _, _ = dit.forward_block(
                x, torch.tensor(t), self.text_k, self.text_v, rope,
                lambda i, q, k, v: self._attend(i, q, k, v, local, fixed, sinks, layer_logs))
            x0 = x - sig[s_i] * flow
            step_logs.append(layer_logs)
            if s_i + 1 < len(ts):
                x = (1 - sig[s_i + 1]) * x0 + sig[s_i + 1] * torch.from_numpy(eps[s_i]).to(self.dtype)

        # Clean pass at t = 0: local window + fixed sink (gated), no retrieved sinks.
        _, k_new, v_new, _ = dit.forward_block(
            x0, torch.tensor(0.0), self.text_k, self.text_v, rope,
            lambda i, q, k, v: self._attend(i, q, k, v, local, fixed, [], []))
        entry = {"start": start, "k": list(k_new), "v": list(v_new)}
        self.cache.append(entry)
        self.latents.append(x0)

        if self.features is not None:
            feat = np.asarray(self.features(index, x0.float().numpy()), dtype=np.float32)
        else:
            frames = self.m.vae.decode(x0[None])                            # block alone: 9 frames
            feat = self.m.pe.block_feature(frames)[0].numpy()
        # The reference's check_similarity: a running maximum that starts at 0.0.
        max_sim = 0.0
        for e in self.bank:
            max_sim = max(max_sim, float(np.dot(feat, e["feat"])))
        compared = bool(self.bank)
        stored = not (compared and max_sim > cfg.dedup_threshold)
        if stored:
            self.bank.append({"start": start, "feat": feat, "k": entry["k"], "v": entry["v"], "latent": x0})
        self.queue.append(feat)

        n_fixed = len(fixed)
        rec = {
            "index": index, "start_frame": start, "window_frames": window,
            "bank_size": len(self.bank) - int(stored),
            "retrieved": [e["start"] for e in sinks], "scores": scores,
            # dropped[entry][step][layer]
            "dropped": [[[layer[n_fixed + j][1] for layer in step] for step in step_logs]
                        for j in range(len(sinks))],
            "ratios": [[[layer[n_fixed + j][0] for layer in step] for step in step_logs]
                       for j in range(len(sinks))],
            "fixed_dropped": [[[layer[j][1] for layer in step] for step in step_logs] for j in range(n_fixed)],
            "stored": stored, "max_similarity": max_sim if compared else None,
            "latent": x0.numpy(), "feature": feat,
        }
        self.log.append(rec)
        return rec

    @torch.no_grad()
    def video(self) -> np.ndarray:
        """Decode all latents in one call, like the reference does at the end: [3, T, H, W]."""
        return self.m.vae.decode(torch.cat(self.latents, dim=1)[None])[0].numpy()
