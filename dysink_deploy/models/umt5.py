"""The umT5-XXL text encoder of Wan2.1 (encoder only), written from Wan's `wan/modules/t5.py` facts.

Parameter names are Wan's, so `models_t5_umt5-xxl-enc-bf16.pth` from the Wan2.1-T2V-1.3B release
loads without renaming:
  token_embedding.weight                      [vocab, dim]
  blocks.N.norm1.weight, blocks.N.norm2.weight [dim]            (T5 RMS norms, no bias)
  blocks.N.attn.{q,k,v}.weight               [dim_attn, dim], blocks.N.attn.o.weight [dim, dim_attn]
  blocks.N.ffn.gate.0.weight, blocks.N.ffn.fc1.weight [dim_ffn, dim], blocks.N.ffn.fc2.weight [dim, dim_ffn]
  blocks.N.pos_embedding.embedding.weight    [num_buckets, heads] (umT5: a bias table per layer)
  norm.weight                                 [dim]

Numerics as the reference: T5 RMS norm with float32 statistics, attention without the 1/sqrt(d)
scale, softmax in float32, the mask added as the dtype's most negative value, tanh-GELU gate,
bidirectional relative-position buckets (32 buckets, max distance 128, computed from key - query).
The reference runs the encoder in float32; rows past the prompt's tokens are zeroed afterwards.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

import torch
from torch import Tensor, nn

from .. import checkpoints as ck
from ..errors import ConfigError
from ..validation import positive_ints
from ..text import PromptTokenizer
from .seeding import seeded


@dataclass(frozen=True)
class UMT5Config:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    heads: int = 64
    layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512            # the pipeline pads / truncates prompts to this many tokens

    def __post_init__(self):
        positive_ints(self, ["vocab_size", "dim", "dim_attn", "dim_ffn", "heads", "layers", "num_buckets",
                             "max_distance", "text_len"])
        if self.dim_attn % self.heads:
            raise ConfigError(f"UMT5Config.dim_attn ({self.dim_attn}) must be divisible by heads ({self.heads})")
        if self.num_buckets % 4:
            raise ConfigError(f"UMT5Config.num_buckets must be a multiple of 4, got {self.num_buckets}")


UMT5_PRESETS = {
    "umt5-xxl": UMT5Config(),
    # Output width 4096 = the tiny DiT's text width; everything else small (CPU tests).
    "tiny": UMT5Config(vocab_size=384, dim=4096, dim_attn=64, dim_ffn=64, heads=4, layers=2),
}


def text_encoder_preset(name: str) -> UMT5Config:
    if name not in UMT5_PRESETS:
        raise ConfigError(f"unknown text encoder preset {name!r}; choose one of: {', '.join(UMT5_PRESETS)}")
    return UMT5_PRESETS[name]


class RMSNorm(nn.Module):
    """T5's norm: x / sqrt(mean(x^2) + eps), statistics in float32, then the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


def _gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class _Gate(nn.Module):
    """`ffn.gate` = Sequential(Linear, GELU): index 0 holds the weight, as in the checkpoints."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.add_module("0", nn.Linear(dim, dim_ffn, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return _gelu_tanh(self._modules["0"](x))


class FeedForward(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.gate = _Gate(cfg.dim, cfg.dim_ffn)
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class Attention(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.heads = cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, L, dim]; bias [B, H, L, L] (position bias + mask) -> [B, L, dim]."""
        b, n = x.shape[0], x.shape[1]
        q, k, v = (p(x).view(b, n, self.heads, -1) for p in (self.q, self.k, self.v))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) + bias        # T5: no 1/sqrt(d) scale
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        return self.o(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, -1))


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 buckets of rel = key - query: half the buckets per sign; exact below
    num_buckets / 4, logarithmic up to max_distance, the last bucket beyond."""
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    log_part = exact + (torch.log(dist.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    log_part = torch.clamp(log_part, max=half - 1)
    return bucket + torch.where(dist < exact, dist, log_part)


class PositionBias(nn.Module):
    """`pos_embedding.embedding`: the per-layer relative position bias table [num_buckets, heads]."""

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.heads)

    def forward(self, length: int) -> Tensor:
        pos = torch.arange(length, device=self.embedding.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]          # [1, H, Lq, Lk]


class Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg)
        self.pos_embedding = PositionBias(cfg)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """keep bool [B, 1, 1, L]: False at padding keys (their bias becomes the dtype's minimum)."""
        bias = self.pos_embedding(x.shape[1]).to(x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
        x = _clamp_fp16(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


def _clamp_fp16(x: Tensor) -> Tensor:
    """fp16 only: keep infinities out of the residual stream, as the reference does."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class UMT5Encoder(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids int64 [B, L], mask [B, L] (1 = token, 0 = padding) -> [B, L, dim], rows past each
        prompt's tokens set to 0 (what the DiT's text_embedding reads)."""
        x = self.token_embedding(ids)
        keep = (mask != 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        return x * (torch.arange(x.shape[1], device=x.device)[None, :] < mask.sum(-1, keepdim=True)).to(x.dtype)[..., None]


def build_text_encoder(cfg: UMT5Config, checkpoint: str | None = None, seed: int = 0) -> UMT5Encoder:
    """Random weights from `seed`, or the release's `models_t5_umt5-xxl-enc-bf16.pth` (any dtype in
    the file; the module stays float32 like the reference)."""
    if checkpoint:
        # Keys and shapes are checked on the meta device first: a wrong file is refused before
        # 23 GB of float32 parameters exist; then the file's tensors become the parameters.
        state = ck.load_tensor_file(checkpoint, "text encoder")
        with torch.device("meta"):
            model = UMT5Encoder(cfg)
        report = ck.compare_keys(model, state, "umT5 text encoder")
        if not report.ok:
            ck.load_into(model, state, "umT5 text encoder", checkpoint)     # raises the one-line report
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
        return model.eval()
    with seeded(seed):
        return UMT5Encoder(cfg).eval()


def encode_prompt(prompt: str, tokenizer: str | os.PathLike, text_encoder: str | None = None,
                  preset: str = "umt5-xxl", device: str = "cpu", seed: int = 0) -> np.ndarray:
    """The prompt's umT5 embeddings float32 [512, dim] (rows past its tokens zero), as the reference
    computes them (encoder in float32). `text_encoder`: models_t5_umt5-xxl-enc-bf16.pth (random
    weights of `preset` from `seed` without one: for tests and the tiny demo)."""
    ids, mask = PromptTokenizer(tokenizer)(prompt)
    cfg = text_encoder_preset(preset)
    if int(ids.max()) >= cfg.vocab_size:
        raise DysinkError(f"the tokenizer produces ids up to {int(ids.max())}, beyond the {preset} encoder's "
                          f"vocabulary ({cfg.vocab_size}); give the tokenizer of the same release")
    model = build_text_encoder(cfg, text_encoder, seed=seed).to(device)
    with torch.inference_mode():
        out = model(torch.from_numpy(ids)[None].to(device), torch.from_numpy(mask)[None].to(device))
    return out[0].float().cpu().numpy()
