"""PE-Core vision encoder: the "memory encoder" DySink uses to index its memory bank.

Meta's Perception Encoder (PE-Core) vision tower in plain PyTorch; its ``state_dict``
equals the ``PE-Core-*.pt`` vision tensors once prefixes are stripped (:func:`vision_state_dict`).
Facts come from DySink's vendored encoder (github.com/yebo0216best/DySink,
``lcm_pe/core/vision_encoder``); file:line citations refer to that repository.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dysink_deploy.config import PE_PRESETS, POOL_TYPES, PEConfig  # noqa: F401 (re-exported)
from dysink_deploy.errors import ConfigError

ROPE_THETA = 10000.0  # rope.py RotaryEmbedding default theta, never overridden by PE
LN_EPS = 1e-5  # pe.py:302 norm_layer=partial(nn.LayerNorm, eps=1e-5)


def vision_state_dict(state_dict: Mapping[str, Tensor]) -> dict:
    """Vision tensors of a PE checkpoint, as pe.py:414-417 picks them: drop DDP's ``module.``;
    if keys live under ``visual.`` (full CLIP file) keep only those, unprefixed."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return sd


def rope_2d_angles(grid_h: int, grid_w: int, head_dim: int, use_cls_token: bool,
                   device: Optional[torch.device] = None) -> Tensor:
    """Per-token rotation angles of PE's 2D RoPE, float32 ``[L, head_dim]``.

    ``L = grid_h * grid_w (+1 with a class token, first)``; patches are row-major.
    Layout (rope.py:315-338): the first ``head_dim/2`` channels turn with the column
    index, the last ``head_dim/2`` with the row index. In each half, channel pair
    ``(2i, 2i+1)`` uses frequency ``theta ** (-2i / (head_dim/2))`` (rope.py:110-113, 292),
    so every frequency appears twice, adjacent. With a class token, patch positions
    start at 1 and the class token gets angle 0, i.e. is never rotated (rope.py:321-336).
    """
    half = head_dim // 2
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)
    offset = 1 if use_cls_token else 0
    rows = torch.arange(grid_h, device=device, dtype=torch.float32) + offset
    cols = torch.arange(grid_w, device=device, dtype=torch.float32) + offset
    row_ang = torch.outer(rows, inv_freq).repeat_interleave(2, dim=-1)  # [H, half]
    col_ang = torch.outer(cols, inv_freq).repeat_interleave(2, dim=-1)  # [W, half]
    angles = torch.cat(
        [col_ang[None, :, :].expand(grid_h, -1, -1), row_ang[:, None, :].expand(-1, grid_w, -1)], dim=-1
    ).reshape(grid_h * grid_w, head_dim)
    if use_cls_token:
        angles = torch.cat([angles.new_zeros(1, head_dim), angles], dim=0)
    return angles


def apply_rope_2d(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate adjacent channel pairs: ``x [..., L, D]``, ``angles [L, D]`` -> ``[..., L, D]``.

    Pair ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``; the maths runs in
    float32 and the result is cast back to ``x.dtype`` (rope.py:32-36, 59-62).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x.float() * angles.cos() + turned * angles.sin()).to(x.dtype)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    """``[..., dim] -> [..., dim]``: c_fc, exact (erf) GELU, c_proj; child names are the checkpoint keys."""
    return nn.Sequential(OrderedDict(c_fc=nn.Linear(dim, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, dim)))


class RopeSelfAttention(nn.Module):
    """Multi-head self-attention laid out like ``nn.MultiheadAttention`` (packed
    ``in_proj_weight`` in q, k, v order) with 2D RoPE applied to q and k."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, angles: Optional[Tensor]) -> Tensor:
        """``x [N, L, D]``, ``angles [L, D/heads]`` or None -> ``[N, L, D]``."""
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        if angles is not None:
            q, k = apply_rope_2d(q, angles), apply_rope_2d(k, angles)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale = head_dim ** -0.5, as PE
        return self.out_proj(out.transpose(1, 2).flatten(2))


class ResidualBlock(nn.Module):
    """Pre-norm block: ``x + ls_1(attn(ln_1 x))`` then ``x + ls_2(mlp(ln_2 x))``."""

    def __init__(self, cfg: PEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        # Without RoPE, PE uses nn.MultiheadAttention here (pe.py:167-170): same tensors, same maths.
        self.attn = RopeSelfAttention(cfg.width, cfg.heads)
        self.ls_1 = nn.Identity() if cfg.ls_init_value is None else LayerScale(cfg.width, cfg.ls_init_value)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = _mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.ls_2 = nn.Identity() if cfg.ls_init_value is None else LayerScale(cfg.width, cfg.ls_init_value)

    def forward(self, x: Tensor, angles: Optional[Tensor]) -> Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), angles))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: PEConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: Tensor, angles: Optional[Tensor]) -> Tensor:
        for block in self.resblocks:
            x = block(x, angles)
        return x


class AttentionPooling(nn.Module):
    """A learned probe cross-attends to all tokens, ``[N, L, D] -> [N, D]``; no residual
    around the attention, only around the MLP (pe.py:83-85)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = _mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        pooled = self.attn(probe, x, x, need_weights=False)[0]
        return (pooled + self.mlp(self.layernorm(pooled))).squeeze(1)


class PECoreVisionEncoder(nn.Module):
    """PE-Core vision tower. ``forward(images [N, 3, H, W]) -> [N, output_dim]``.

    Keys equal the checkpoint's: ``conv1.weight, class_embedding, positional_embedding,
    ln_pre.*, transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp}.*, ln_post.*,
    attn_pool.{probe,attn,layernorm,mlp}.*, proj``. RoPE tables are rebuilt per call and,
    as in PE (Rope2D is not an nn.Module), are not in the state dict.
    """

    def __init__(self, cfg: PEConfig):
        super().__init__()
        self.cfg = cfg
        w, scale = cfg.width, cfg.width ** -0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        if cfg.use_cls_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(w))
        if cfg.use_abs_posemb:
            n_pos = int(cfg.use_cls_token) + cfg.grid_size ** 2
            self.positional_embedding = nn.Parameter(scale * torch.randn(n_pos, w))
        self.ln_pre = nn.LayerNorm(w, eps=LN_EPS) if cfg.use_ln_pre else nn.Identity()
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(w, eps=LN_EPS) if cfg.use_ln_post else nn.Identity()
        # PE never hands the tower's mlp_ratio to the pooler (pe.py:362-368): its MLP is always 4x.
        self.attn_pool = AttentionPooling(w, cfg.attn_pooler_heads, 4.0) if cfg.pool_type == "attn" else None
        if cfg.output_dim is not None:
            self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim))

    @classmethod
    def from_preset(cls, name: str) -> "PECoreVisionEncoder":
        if name not in PE_PRESETS:
            raise ConfigError(f"unknown PE preset {name!r}; choose from {sorted(PE_PRESETS)}")
        return cls(PE_PRESETS[name])

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim or self.cfg.width

    def _abs_posemb(self, grid_h: int, grid_w: int) -> Tensor:
        """``[L, width]``; bilinear-resampled (align_corners=False) off the trained grid (pe.py:463-485)."""
        pos, g = self.positional_embedding, self.cfg.grid_size
        if (grid_h, grid_w) == (g, g):
            return pos
        cls_pos, patch_pos = pos[: int(self.cfg.use_cls_token)], pos[int(self.cfg.use_cls_token):]
        patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)], dim=0)

    def forward_features(self, images: Tensor) -> Tensor:
        """``images [N, 3, H, W]`` (already normalised to PE's [-1, 1] range) ->
        tokens ``[N, L, width]`` after ``ln_post``; L = (H//p)*(W//p) (+1 class token, first).
        Trailing pixels that do not fill a patch are dropped, as PE's strided conv does."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        n, _, h, w = images.shape
        grid_h, grid_w = h // self.cfg.patch_size, w // self.cfg.patch_size
        x = self.conv1(images).flatten(2).transpose(1, 2)  # row-major patches
        if self.cfg.use_cls_token:
            x = torch.cat([self.class_embedding.to(x.dtype).expand(n, 1, -1), x], dim=1)
        if self.cfg.use_abs_posemb:
            x = x + self._abs_posemb(grid_h, grid_w)
        angles = rope_2d_angles(grid_h, grid_w, self.cfg.head_dim, self.cfg.use_cls_token, x.device) \
            if self.cfg.use_rope2d else None
        return self.ln_post(self.transformer(self.ln_pre(x), angles))

    def forward(self, images: Tensor) -> Tensor:
        """``images [N, 3, H, W]`` -> ``[N, output_dim]``. Not L2-normalised: PE's
        ``VisionTransformer.forward`` (pe.py:535-542) returns raw projected features;
        only ``CLIP.encode_image(normalize=True)`` normalises."""
        x = self.forward_features(images)
        if self.cfg.pool_type == "attn":
            x = self.attn_pool(x)
        elif self.cfg.pool_type == "tok":
            x = x[:, 0]
        elif self.cfg.pool_type == "avg":
            x = x.mean(dim=1)
        return x @ self.proj if self.cfg.output_dim is not None else x

    @torch.no_grad()
    def block_feature(self, frames: Tensor, layout: str = "bcthw") -> Tensor:
        """DySink memory-bank key for one generated block: ``[B, output_dim]``, unit L2 norm.

        ``frames``: decoded video in [-1, 1], ``[B, 3, T, H, W]`` (raw VAE-decoder layout,
        ``layout="bcthw"``) or ``[B, T, 3, H, W]`` (``layout="btchw"``, what DySink's
        ``WanVAEWrapper.decode_to_pixel`` returns after its permute, utils/wan_wrapper.py:114-116).

        Steps, as DySink runs them:
          1. clamp to [-1, 1] (wan_wrapper.py:112), then ``x * 0.5 + 0.5`` clamped to [0, 1]
             (pipeline/memory_causal_inference_eb.py:328-329);
          2. only if H or W differs from image_size: squash-resize to image_size x image_size,
             ``F.interpolate(mode="bilinear", align_corners=False)``, antialias off, no crop,
             in the [0, 1] domain (utils/memory_bank_eb.py:147-156);
          3. ``x * 2 - 1``, i.e. Normalize(mean=0.5, std=0.5) (memory_bank_eb.py:158-159);
          4. encode every frame in float32 (pipeline/memory_causal_inference_eb.py:101), raw,
             un-normalised embeddings (memory_bank_eb.py:168);
          5. plain mean over frames, then one ``F.normalize(dim=-1)`` (memory_bank_eb.py:173-177).
        """
        channel_dim = {"bcthw": 1, "btchw": 2}.get(layout)
        if channel_dim is None or frames.ndim != 5 or frames.shape[channel_dim] != 3:
            raise ValueError(f"frames must be 5-D with 3 channels for layout {layout!r} "
                             f"('bcthw' or 'btchw'), got {tuple(frames.shape)}")
        frames = frames.transpose(1, 2) if layout == "bcthw" else frames
        b, t, c, h, w = frames.shape
        size = self.cfg.image_size
        x = (frames.reshape(b * t, c, h, w).clamp(-1, 1) * 0.5 + 0.5).clamp(0, 1)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x * 2.0 - 1.0).to(self.conv1.weight.dtype)
        per_frame = self(x).reshape(b, t, -1)
        return F.normalize(per_frame.mean(dim=1), dim=-1)
