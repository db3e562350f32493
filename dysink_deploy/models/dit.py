"""The causal Wan2.1 text-to-video DiT, evaluated one block at a time.

Parameter names and shapes match the Wan2.1 / Self-Forcing / DySink
checkpoints (`patch_embedding`, `text_embedding.{0,2}`, `time_embedding.{0,2}`,
`time_projection.1`, `blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}`,
`blocks.N.{norm3,ffn.0,ffn.2,modulation}`, `head.{head,modulation}`), so
stripped checkpoints load without renaming.

Precision follows the reference (DySink's causal_model.py, where Wan's float32
autocast blocks are commented out): LayerNorm and RMSNorm compute their
statistics in float32 and cast back; modulation, the residual stream, the
time embedding and the head run in the parameters' dtype. Attention softmax
accumulates in float32. In an fp32 model all of it is fp32.

The stream is one video (batch 1). A block is `F` latent frames of
`grid_h x grid_w` patches: L = F * grid_h * grid_w tokens.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DiTConfig, StreamConfig
from ..ops.gated_sink_attention import gated_sink_attention_node

# attend(layer, q, k, v) -> (out [L, H, D], gate ratios [S] or None)
AttendFn = Callable[[int, Tensor, Tensor, Tensor], tuple[Tensor, Tensor | None]]


class RMSNorm(nn.Module):
    """Wan's RMSNorm over the full width; statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameters' dtype; returns x's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate adjacent pairs of x [L, H, D] by phases rope [2, L, D/2] (cos, sin), in float32."""
    tokens, heads, dim = x.shape
    pairs = x.float().reshape(tokens, heads, dim // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = rope[0][:, None, :], rope[1][:, None, :]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.reshape(tokens, heads, dim).to(x.dtype)


def timestep_sinusoid(t: Tensor, freq_dim: int) -> Tensor:
    """Wan's sinusoidal embedding [cos | sin] of a float timestep tensor [N] -> [N, freq_dim], float64 math."""
    half = freq_dim // 2
    inv = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.double()[:, None] * inv[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).float()


class _Projections(nn.Module):
    """q, k, v, o Linear layers and RMSNorm on q and k over the full width (self and cross alike)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], self.heads, self.head_dim)


class SelfAttention(_Projections):
    def qkv(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [L, dim] -> post-RoPE q, k and v, each [L, H, D]."""
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(x)))
        return apply_rope(q, rope), apply_rope(k, rope), self._heads(self.v(x))


class CrossAttention(_Projections):
    def text_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Projected text tokens [T, dim] -> k, v [T, H, D] (computed once per prompt)."""
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def forward(self, x: Tensor, text_k: Tensor, text_v: Tensor) -> Tensor:
        """All text tokens attend, zero-padded ones included (the reference passes no lengths)."""
        q = self._heads(self.norm_q(self.q(x)))
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).float(), text_k.transpose(0, 1).float(), text_v.transpose(0, 1).float())
        return self.o(out.transpose(0, 1).reshape(x.shape[0], -1).to(x.dtype))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm1 = FP32LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = FP32LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = FP32LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: Tensor, e0: Tensor, text_k: Tensor, text_v: Tensor, rope: Tensor,
                attend: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor | None]]):
        """x [L, dim] residual stream, e0 [6, dim] (model dtype) -> (x, k, v, gate ratios)."""
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (self.modulation[0] + e0).unbind(0)
        q, k, v = self.self_attn.qkv(self.norm1(x) * (1 + scale_a) + shift_a, rope)
        y, ratios = attend(q, k, v)
        x = x + self.self_attn.o(y.reshape(x.shape[0], -1)) * gate_a
        x = x + self.cross_attn(self.norm3(x), text_k, text_v)
        x = x + self.ffn(self.norm2(x) * (1 + scale_f) + shift_f) * gate_f
        return x, k, v, ratios


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = FP32LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation[0] + e).unbind(0)
        return self.head(self.norm(x) * (1 + scale) + shift)


class CausalWanDiT(nn.Module):
    """Wan2.1 causal DiT. Use `text_kv` once per prompt, then `forward_block` per step."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.layers))
        self.head = Head(cfg)

    # -- once per prompt ---------------------------------------------------
    def text_kv(self, prompt_embeds: Tensor) -> tuple[Tensor, Tensor]:
        """prompt_embeds [text_len, text_dim] -> text K and V, each [layers, text_len, H, D]."""
        dtype = self.text_embedding[0].weight.dtype
        context = self.text_embedding(prompt_embeds.to(dtype))
        pairs = [blk.cross_attn.text_kv(context) for blk in self.blocks]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])

    # -- per block and step --------------------------------------------------
    def _time(self, t: Tensor, t_freq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Model timestep -> (e [dim], e0 [6, dim]) in the parameters' dtype. `t_freq`
        [freq_dim] float32: the sinusoid computed outside (graphs: no float64 in TensorRT)."""
        dtype = self.time_embedding[0].weight.dtype
        freq = timestep_sinusoid(t.reshape(1), self.cfg.freq_dim) if t_freq is None else t_freq.reshape(1, -1)
        e = self.time_embedding(freq.to(dtype))
        e0 = self.time_projection(e).reshape(6, self.cfg.dim)
        return e[0], e0

    def forward_block(self, x_t: Tensor, t: Tensor, text_k: Tensor, text_v: Tensor, rope: Tensor,
                      attend: AttendFn, t_freq: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, list]:
        """One evaluation of the DiT on one block.

        x_t [C, F, h, w] latent, t scalar tensor (model timestep, 0..1000),
        text_k/text_v [layers, T, H, D], rope [2, L, D/2].
        Returns (flow [C, F, h, w] float32, k [layers, L, H, D], v [layers, L, H, D],
        list of per-layer gate ratios as returned by `attend`).
        """
        cfg = self.cfg
        channels, frames, lat_h, lat_w = x_t.shape
        pt, ph, pw = cfg.patch
        wdtype = self.patch_embedding.weight.dtype
        tokens = self.patch_embedding(x_t[None].to(wdtype))[0]                 # [dim, F, gh, gw]
        grid = tokens.shape[1:]
        x = tokens.flatten(1).transpose(0, 1)                                  # [L, dim]
        e, e0 = self._time(t, t_freq)
        ks, vs, ratios = [], [], []
        for i, blk in enumerate(self.blocks):
            x, k, v, r = blk(x, e0, text_k[i], text_v[i], rope,
                             lambda q_, k_, v_, i=i: attend(i, q_, k_, v_))
            ks.append(k)
            vs.append(v)
            ratios.append(r)
        out = self.head(x, e)                                                  # [L, C*pt*ph*pw]
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        out = out.reshape(*grid, pt, ph, pw, cfg.out_dim)
        flow = out.permute(6, 0, 3, 1, 4, 2, 5).reshape(cfg.out_dim, frames, lat_h, lat_w)
        return flow, torch.stack(ks), torch.stack(vs), ratios


class DiTStep(nn.Module):
    """One denoising step of one block over the paged K/V cache (the `dit_step` graph).

    Inputs:  x_t [C, F, h, w]; t float32 []; text_k/text_v [layers, T, H, D];
             rope float32 [2, L, D/2]; k_pools/v_pools: per layer [P, L, H, D] (the model dtype,
             bf16, or 8-bit with k_scales/v_scales [P, L, H]: `kv_cache_dtype`);
             local_ids int64 [S_loc]; sink_ids int64 [S_sink]
    Outputs: x0 [C, F, h, w] float32 (x_t - sigma * flow, sigma = t / 1000, rounded
             to the model dtype like the reference),
             k_new/v_new [layers, L, H, D] (this step's post-RoPE K/V),
             ratios float32 [layers, S_sink].
    """

    def __init__(self, dit: CausalWanDiT, stream: StreamConfig, attention: Callable | None = None):
        """`attention`: an implementation of GatedSinkAttention with the reference's signature
        (default: the reference / ONNX node; the torch backend passes the Triton kernels)."""
        super().__init__()
        self.dit = dit
        self.threshold = float(stream.gate_threshold)
        self.sink_kv_bf16 = bool(stream.sink_kv_bf16)
        self.fixed_sinks = int(stream.fixed_sink_pages)  # sink slots [fixed | retrieved]
        self.attention = attention or gated_sink_attention_node

    def forward(self, x_t, t, text_k, text_v, rope, k_pools, v_pools, local_ids, sink_ids, t_freq=None,
                k_scales=None, v_scales=None):
        """k_scales / v_scales: per layer float32 [P, L, H], with 8-bit pools (ops/kv_pages.py)."""
        def attend(i, q, k, v):
            scales = {} if k_scales is None else {"k_scale": k_scales[i], "v_scale": v_scales[i]}
            return self.attention(q, k, v, k_pools[i], v_pools[i], local_ids, sink_ids,
                                  self.threshold, self.sink_kv_bf16, self.fixed_sinks, **scales)

        flow, k_new, v_new, ratios = self.dit.forward_block(x_t, t, text_k, text_v, rope, attend, t_freq)
        # The reference converts in float64 and rounds x0 to the model dtype.
        sigma = t.float() / 1000.0
        x0 = (x_t.float() - sigma * flow).to(self.dit.patch_embedding.weight.dtype).float()
        return x0, k_new, v_new, torch.stack(ratios)


def window_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor) -> Tensor:
    """Plain attention of every token over every valid key (bidirectional), softmax and accumulation
    in float32 like the custom op: q, k, v [L, H, D], key_valid bool [L] -> [L, H, D] in q's dtype."""
    qh, kh, vh = (a.float().transpose(0, 1) for a in (q, k, v))                # [H, L, D]
    scores = torch.matmul(qh, kh.transpose(1, 2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~key_valid[None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), vh).transpose(0, 1).to(q.dtype)


class WindowRecache(nn.Module):
    """The window recache after a prompt switch (the `dit_recache` graph; ALGORITHM.md section 9).

    One DiT evaluation at timestep t over up to `frames` latent frames, every frame attending to
    every valid frame (the reference's KV-cache path ignores its block mask here), no sinks and no
    cached context: the K/V of those frames under the new prompt.

    Inputs:  x [C, frames, h, w] float32 (the valid frames first, the rest ignored); t float32 [];
             t_freq float32 [freq_dim]; text_k/text_v [layers, T, H, D]; rope [2, frames * Lf, D/2];
             key_valid bool [frames * Lf] (False for padding frames)
    Outputs: k, v [layers, frames * Lf, H, D] (padding rows are meaningless).
    """

    def __init__(self, dit: CausalWanDiT):
        super().__init__()
        self.dit = dit

    def forward(self, x, t, t_freq, text_k, text_v, rope, key_valid):
        def attend(i, q, k, v):
            return window_attention(q, k, v, key_valid), None

        _, k, v, _ = self.dit.forward_block(x, t, text_k, text_v, rope, attend, t_freq)
        return k, v
