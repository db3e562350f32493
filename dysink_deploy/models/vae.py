"""Decoder half of the Wan2.1 video VAE, with an explicit streaming cache.

The parameter layout equals the ``conv2.*`` and ``decoder.*`` entries of
``Wan2.1_VAE.pth``, so a filtered checkpoint loads without renaming (see
`decoder_state_dict_from_wan`).

Wan decodes one latent frame at a time and keeps, for every causal temporal
convolution, the last ``CACHE_FRAMES`` frames of that convolution's input in a
Python list that starts as ``None``. Here the same history is a list of
fixed-shape tensors that goes in and comes out of `WanVAEDecoder.decode_block`:
a zero history is exactly Wan's zero padding, so nothing but tensors crosses
the call boundary and the block can be exported with the cache as graph
inputs/outputs. Shapes: latents ``[B, z_dim, T, h, w]``, frames
``[B, 3, T_out, 8h, 8w]`` for the Wan2.1 strides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dysink_deploy.config import (  # noqa: F401 (re-exported)
    VAE_PRESETS, WAN21_LATENT_MEAN, WAN21_LATENT_STD, VAEConfig)
from dysink_deploy.errors import ConfigError
from dysink_deploy.graphs import VAE_LAYOUTS as _GRAPH_VAE_LAYOUTS

__all__ = [
    "CACHE_FRAMES",
    "VAE_LAYOUTS",
    "VAEConfig",
    "VAE_PRESETS",
    "WanVAEDecoder",
    "decoder_state_dict_from_wan",
]

# A temporal kernel of 3 looks at 2 past frames (Wan's CACHE_T).
CACHE_FRAMES = 2

# How `WanVAEDecoder.decode_block` lays its tensors out inside (the same function, the same parameters,
# the same inputs and outputs; only the float summation order differs):
#   "channels": [B, C, T, H, W] with Conv3d, Wan's own layout (the reference);
#   "frames":   [B, T, C, H, W] with every 3D convolution as the sum of one Conv2d per temporal tap over
#               the frames folded into the batch. ONNX Runtime's CPU provider has fast (NCHWc) kernels
#               for 2D convolutions only, and in this layout the time shifts, the history concat and the
#               temporal upsample's frame interleave are contiguous slices and reshapes, not transposes.
VAE_LAYOUTS = tuple(v for v in _GRAPH_VAE_LAYOUTS if v != "auto")

def decoder_state_dict_from_wan(state_dict: dict) -> dict:
    """Keep the entries of a full Wan VAE state dict that this decoder owns."""
    return {
        k: v for k, v in state_dict.items() if k.startswith(("conv2.", "decoder."))
    }


def _fold_time(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] so 2D layers see each frame alone."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _unfold_time(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B*T, C, H, W] -> [B, C, T, H, W]."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class _RMSNorm(nn.Module):
    """Channel-wise L2 normalisation rescaled to unit RMS, times a learned gain.

    ``gamma`` is [C, 1, 1, 1] for video tensors and [C, 1, 1] for per-frame
    image tensors, matching the checkpoint.
    """

    def __init__(self, dim: int, video: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1, 1) if video else (1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Video gain on a frame-major [B, T, C, H, W] tensor."""
        return F.normalize(x, dim=2) * self.scale * self.gamma.view(-1, 1, 1)


class _CausalConv3d(nn.Conv3d):
    """Conv3d with a temporal kernel of 3 that only looks back in time.

    Instead of zero padding, the ``CACHE_FRAMES`` previous input frames are
    prepended. x: [B, Cin, T, H, W], history: [B, Cin, 2, H, W] ->
    (y: [B, Cout, T, H, W], new history: [B, Cin, 2, H, W]).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: tuple[int, int, int]):
        assert kernel[0] == CACHE_FRAMES + 1
        super().__init__(in_dim, out_dim, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))

    def forward(self, x: torch.Tensor, history: torch.Tensor | None):
        # No history (start of a video) is zero history: pad rather than
        # concatenate zeros, so an exported first-block graph needs no cache
        # inputs and holds no zero constants.
        if history is None:
            full = F.pad(x, (0, 0, 0, 0, CACHE_FRAMES, 0))
        else:
            full = torch.cat([history, x], dim=2)
        return super().forward(full), full[:, :, -CACHE_FRAMES:]

    def forward_frames(self, x: torch.Tensor, history: torch.Tensor | None):
        """The same convolution frame-major: x [B, T, Cin, H, W], history [B, 2, Cin, H, W]."""
        full = F.pad(x, (0, 0, 0, 0, 0, 0, CACHE_FRAMES, 0)) if history is None else torch.cat([history, x], dim=1)
        b, t, c, h, w = x.shape
        y = None
        for i in range(CACHE_FRAMES + 1):  # tap i sees frame j + i of the padded input for output frame j
            term = F.conv2d(full[:, i : i + t].reshape(b * t, c, h, w), self.weight[:, :, i],
                            self.bias if i == 0 else None, padding=self.padding[1:])
            y = term if y is None else y + term
        return y.reshape(b, t, self.out_channels, h, w), full[:, -CACHE_FRAMES:]


class _ResidualBlock(nn.Module):
    """(norm, SiLU, conv) x 2 plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        # Identity at index 5 stands where Wan keeps a Dropout, so the
        # checkpoint's Sequential indices (residual.0/2/3/6) line up.
        self.residual = nn.Sequential(
            _RMSNorm(in_dim), nn.SiLU(), _CausalConv3d(in_dim, out_dim, (3, 3, 3)),
            _RMSNorm(out_dim), nn.SiLU(), nn.Identity(),
            _CausalConv3d(out_dim, out_dim, (3, 3, 3)),
        )
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def cache_channels(self) -> list[int]:
        return [self.residual[2].in_channels, self.residual[6].in_channels]

    def forward(self, x, caches, first):
        norm1, act1, conv1, norm2, act2, _, conv2 = self.residual
        h, c1 = conv1(act1(norm1(x)), caches[0])
        h, c2 = conv2(act2(norm2(h)), caches[1])
        return h + self.shortcut(x), [c1, c2]

    def forward_frames(self, x, caches, first):
        norm1, act1, conv1, norm2, act2, _, conv2 = self.residual
        h, c1 = conv1.forward_frames(act1(norm1.forward_frames(x)), caches[0])
        h, c2 = conv2.forward_frames(act2(norm2.forward_frames(h)), caches[1])
        if isinstance(self.shortcut, nn.Identity):
            return h + x, [c1, c2]
        b, t, c, hh, ww = x.shape
        skip = F.conv2d(x.reshape(b * t, c, hh, ww), self.shortcut.weight[:, :, 0], self.shortcut.bias)
        return h + skip.reshape(b, t, -1, hh, ww), [c1, c2]


class _AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = _RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        # As in Wan: a fresh block starts out as the identity.
        nn.init.zeros_(self.proj.weight)

    def cache_channels(self) -> list[int]:
        return []

    def forward(self, x, caches, first):
        b, c, t, h, w = x.shape
        f = self.to_qkv(self.norm(_fold_time(x)))  # [B*T, 3C, H, W], channels q|k|v
        q, k, v = f.reshape(b * t, 3 * c, h * w).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, HW, C]
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + _unfold_time(self.proj(y), b), []

    def forward_frames(self, x, caches, first):
        b, t, c, h, w = x.shape
        f = self.to_qkv(self.norm(x.reshape(b * t, c, h, w)))
        q, k, v = f.reshape(b * t, 3 * c, h * w).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(y).reshape(b, t, c, h, w), []


class _Upsample(nn.Module):
    """x2 spatial upsampling (channels halved), optionally x2 temporal first.

    The temporal part is a causal conv producing 2C channels that are read as
    two consecutive output frames. At the start of a video (``first``) the
    first frame bypasses it and the conv's history stays zero, which is Wan's
    rule that turns 1 latent frame into 1 pixel frame.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        # 'nearest' equals Wan's 'nearest-exact' at an integer factor of 2 and
        # exports to a plainer ONNX Resize.
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        if temporal:
            self.time_conv = _CausalConv3d(dim, dim * 2, (3, 1, 1))

    def cache_channels(self) -> list[int]:
        return [self.time_conv.in_channels] if self.temporal else []

    def forward(self, x, caches, first):
        new_caches = []
        if self.temporal:
            head, x = (x[:, :, :1], x[:, :, 1:]) if first else (x[:, :, :0], x)
            history = caches[0]
            if x.shape[2] > 0:  # static under tracing: only a 1-frame first block skips this
                y, history = self.time_conv(x, history)
                b, c2, t, hh, ww = y.shape
                # [B, (2, C), T] -> [B, C, (T, 2)]: pair member j becomes frame 2t+j.
                x = y.reshape(b, 2, c2 // 2, t, hh, ww).permute(0, 2, 3, 1, 4, 5)
                x = x.reshape(b, c2 // 2, 2 * t, hh, ww)
            x = torch.cat([head, x], dim=2)
            if history is None:  # a 1-frame first block never reached time_conv
                history = head.new_zeros(head.shape[0], head.shape[1], CACHE_FRAMES, *head.shape[3:])
            new_caches.append(history)
        return _unfold_time(self.resample(_fold_time(x)), x.shape[0]), new_caches

    def forward_frames(self, x, caches, first):
        new_caches = []
        if self.temporal:
            head, x = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
            history = caches[0]
            if x.shape[1] > 0:
                y, history = self.time_conv.forward_frames(x, history)
                b, t, c2, hh, ww = y.shape
                # [B, T, (2, C)] -> [B, (T, 2), C]: pair member j becomes frame 2t+j, a plain reshape here.
                x = y.reshape(b, 2 * t, c2 // 2, hh, ww)
            x = torch.cat([head, x], dim=1)
            if history is None:
                history = head.new_zeros(head.shape[0], CACHE_FRAMES, *head.shape[2:])
            new_caches.append(history)
        b, t, c, h, w = x.shape
        y = self.resample(x.reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]), new_caches


class _Decoder3d(nn.Module):
    """Wan's Decoder3d: conv1 -> middle -> upsample stages -> head (attention only in the middle)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        self.conv1 = _CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3))
        self.middle = nn.Sequential(
            _ResidualBlock(dims[0], dims[0]), _AttentionBlock(dims[0]), _ResidualBlock(dims[0], dims[0])
        )
        blocks: list[nn.Module] = []
        n_stages = len(cfg.dim_mult)
        for i in range(n_stages):
            # Every upsample halves the width, so later stages start at dims[i] // 2.
            in_dim = dims[i] if i == 0 else dims[i] // 2
            out_dim = dims[i + 1]
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(_ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < n_stages - 1:
                blocks.append(_Upsample(out_dim, cfg.temporal_upsample[i]))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(_RMSNorm(out_dim), nn.SiLU(), _CausalConv3d(out_dim, 3, (3, 3, 3)))

    def cache_layout(self) -> list[tuple[int, int]]:
        """(channels, spatial scale w.r.t. the latent) of each history, in use order."""
        layout, scale = [(self.conv1.in_channels, 1)], 1
        for block in (*self.middle, *self.upsamples):
            layout += [(c, scale) for c in block.cache_channels()]
            if isinstance(block, _Upsample):
                scale *= 2
        layout.append((self.head[2].in_channels, scale))
        return layout

    def forward(self, x, cache, first):
        x, c = self.conv1(x, cache[0])
        new_cache, pos = [c], 1
        for block in (*self.middle, *self.upsamples):
            n = len(block.cache_channels())
            x, cs = block(x, cache[pos : pos + n], first)
            new_cache += cs
            pos += n
        norm, act, conv = self.head
        x, c = conv(act(norm(x)), cache[pos])
        return x, new_cache + [c]

    def forward_frames(self, x, cache, first):
        """`forward` on frame-major tensors: x [B, T, C, H, W], every history [B, 2, C_i, H_i, W_i]."""
        x, c = self.conv1.forward_frames(x, cache[0])
        new_cache, pos = [c], 1
        for block in (*self.middle, *self.upsamples):
            n = len(block.cache_channels())
            x, cs = block.forward_frames(x, cache[pos : pos + n], first)
            new_cache += cs
            pos += n
        norm, act, conv = self.head
        x, c = conv.forward_frames(act(norm.forward_frames(x)), cache[pos])
        return x, new_cache + [c]


class WanVAEDecoder(nn.Module):
    """Wan2.1 VAE decoder (``conv2`` + ``decoder``) with a pure, fixed-shape cache API.

    Frames come out in [-1, 1] (clamped, as Wan's ``WanVAE.decode`` does), in
    the dtype of the input latent; the module's parameters must share that dtype.
    """

    def __init__(self, config: VAEConfig | str = "wan2.1"):
        super().__init__()
        if isinstance(config, str):
            if config not in VAE_PRESETS:
                raise ConfigError(f"unknown VAE preset {config!r}; known: {sorted(VAE_PRESETS)}")
            config = VAE_PRESETS[config]
        self.config = config
        self.conv2 = nn.Conv3d(config.z_dim, config.z_dim, 1)
        self.decoder = _Decoder3d(config)

    def num_output_frames(self, latent_frames: int, first: bool) -> int:
        """1 + s*(T-1) pixel frames at the start of a video, s*T afterwards (s = 4 for Wan2.1)."""
        s = self.config.temporal_stride
        return 1 + s * (latent_frames - 1) if first else s * latent_frames

    def cache_shapes(self, batch: int, latent_h: int, latent_w: int) -> list[tuple[int, ...]]:
        """Shape ``(B, C_i, CACHE_FRAMES, h*s_i, w*s_i)`` of every history tensor, in use order.

        Order: decoder.conv1, then each residual block's two convs and each
        temporal upsample's time_conv in module order (middle, then upsamples),
        then the head conv. Entry i holds the last 2 frames of that conv's input.
        """
        return [
            (batch, c, CACHE_FRAMES, latent_h * s, latent_w * s)
            for c, s in self.decoder.cache_layout()
        ]

    def init_cache(
        self, batch: int, latent_h: int, latent_w: int, dtype=torch.float32, device="cpu"
    ) -> list[torch.Tensor]:
        """All-zero histories (a zero history is what a video start looks like)."""
        return [
            torch.zeros(shape, dtype=dtype, device=device)
            for shape in self.cache_shapes(batch, latent_h, latent_w)
        ]

    def decode_block(self, z: torch.Tensor, cache: list[torch.Tensor], first: bool, layout: str = "channels"):
        """Decode a block of latent frames, continuing from ``cache``.

        Args:
            z: normalised latent [B, z_dim, T, h, w]; de-normalised here as z * std + mean.
            cache: tensors shaped as `cache_shapes(B, h, w)`; not modified. Ignored
                (zero history) when ``first`` is True, where it may be None.
            first: True for the first block of a video (Wan's first-frame rule).
            layout: how the tensors are laid out inside (`VAE_LAYOUTS`); the inputs and outputs are the
                same either way, and so are the values up to float summation order.

        Returns:
            frames [B, 3, num_output_frames(T, first), h*8, w*8] in [-1, 1], and the
            new cache (same shapes) to pass to the next block with ``first=False``.
        """
        if z.dim() != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"z must be [B, {self.config.z_dim}, T, h, w], got {tuple(z.shape)}")
        expected = self.cache_shapes(z.shape[0], z.shape[3], z.shape[4])
        got = expected if cache is None and first else [tuple(c.shape) for c in cache]
        if got != expected:
            bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
            detail = f"entry {bad} is {got[bad]}, expected {expected[bad]}" if bad is not None else (
                f"got {len(got)} tensors, expected {len(expected)}")
            raise ValueError(f"cache does not match cache_shapes(B, h, w): {detail}")
        if layout not in VAE_LAYOUTS:
            raise ValueError(f"layout must be one of {VAE_LAYOUTS}, got {layout!r}")
        mean = torch.tensor(self.config.latent_mean, dtype=z.dtype, device=z.device)
        std = torch.tensor(self.config.latent_std, dtype=z.dtype, device=z.device)
        z = z * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
        if first:
            cache = [None] * len(expected)
        if layout == "channels":
            x, new_cache = self.decoder(self.conv2(z), list(cache), first)
            return x.clamp(-1.0, 1.0), new_cache
        b, _, t, h, w = z.shape
        zf = z.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
        x = F.conv2d(zf, self.conv2.weight[:, :, 0], self.conv2.bias).reshape(b, t, -1, h, w)
        frame_major = [None if c is None else c.permute(0, 2, 1, 3, 4) for c in cache]
        x, new_cache = self.decoder.forward_frames(x, frame_major, first)
        return (x.permute(0, 2, 1, 3, 4).clamp(-1.0, 1.0),
                [c.permute(0, 2, 1, 3, 4) for c in new_cache])

    forward = decode_block

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Whole-video decode: [B, z_dim, T, h, w] -> [B, 3, 1 + 4(T-1), 8h, 8w] in [-1, 1].

        Runs one latent frame per step, like Wan, which bounds peak memory.
        """
        b, _, t, h, w = z.shape
        cache = self.init_cache(b, h, w, dtype=z.dtype, device=z.device)
        frames = []
        for i in range(t):
            out, cache = self.decode_block(z[:, :, i : i + 1], cache, first=(i == 0))
            frames.append(out)
        return torch.cat(frames, dim=2)
