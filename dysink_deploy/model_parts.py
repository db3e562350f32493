"""Architectures of the three networks: DiTConfig, VAEConfig, PEConfig and their presets.

Torch-free (the numpy-only runtime reads these too); every dataclass checks itself in
``__post_init__`` and raises `ConfigError` naming the offending field(s).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import ConfigError
from .validation import is_int, positive_ints, require

__all__ = ["DIT_PRESETS", "DiTConfig", "PEConfig", "PE_PRESETS", "POOL_TYPES", "VAEConfig", "VAE_PRESETS",
           "WAN21_LATENT_MEAN", "WAN21_LATENT_STD"]


# ---------------------------------------------------------------------------
# The causal Wan2.1 DiT
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the causal Wan2.1 text-to-video DiT."""

    dim: int = 1536
    layers: int = 30
    heads: int = 12
    ffn_dim: int = 8960
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # stage2 LoRA: rank and alpha are not stored in the file (config values).
    lora_rank: int = 256
    lora_alpha: float = 256.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(self.patch))
        positive_ints(self, ["dim", "layers", "heads", "ffn_dim", "freq_dim", "in_dim",
                             "out_dim", "text_dim", "text_len", "lora_rank"])
        require(self.dim % self.heads == 0,
                f"DiTConfig.dim ({self.dim}) must be divisible by DiTConfig.heads ({self.heads})")
        require(self.head_dim % 2 == 0 and self.head_dim >= 12,
                f"DiTConfig.dim / heads = {self.head_dim} must be even and >= 12 (3D RoPE splits it)")
        require(len(self.patch) == 3 and all(is_int(p) and p > 0 for p in self.patch),
                f"DiTConfig.patch must be three positive integers, got {self.patch!r}")
        require(self.patch[0] == 1, "DiTConfig.patch[0] must be 1: the stream works on whole latent frames")
        require(self.freq_dim % 2 == 0, f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        for name in ("eps", "rope_theta", "lora_alpha"):     # numbers, not booleans; all of them read
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0, f"DiTConfig.{name} must be a finite number > 0, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex pairs for (time, height, width): 22/21/21 for head dim 128."""
        d = self.head_dim
        return ((d - 4 * (d // 6)) // 2, d // 6, d // 6)


DIT_PRESETS = {
    "wan2.1-t2v-1.3b": DiTConfig(),
    # Seconds on CPU; the text interface keeps the real [512, 4096] shape so
    # prompt-embedding files are interchangeable between presets.
    "tiny": DiTConfig(dim=64, layers=2, heads=2, ffn_dim=128, freq_dim=32, lora_rank=4, lora_alpha=8.0),
}


# ---------------------------------------------------------------------------
# Wan2.1 VAE decoder; module: models/vae.py
# ---------------------------------------------------------------------------
# Per-channel statistics of Wan2.1 latents; normalised latent = (z - mean) / std.
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)



@dataclass(frozen=True)
class VAEConfig:
    """Decoder hyper-parameters (defaults are Wan2.1's).

    ``temporal_upsample[i]`` says whether the upsample after decoder stage ``i``
    doubles time; it is Wan's ``temperal_downsample`` reversed, so it has
    ``len(dim_mult) - 1`` entries.
    """

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_upsample: tuple[bool, ...] = (True, True, False)
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN21_LATENT_STD

    def __post_init__(self):
        errors = []
        # Lists are accepted for convenience but stored as tuples so the config stays hashable.
        for name in ("dim_mult", "temporal_upsample", "latent_mean", "latent_std"):
            try:
                object.__setattr__(self, name, tuple(getattr(self, name)))
            except TypeError:
                errors.append(f"{name} must be a sequence, got {getattr(self, name)!r}")
        if errors:
            raise ConfigError("invalid VAEConfig: " + "; ".join(errors))

        if not (is_int(self.dim) and self.dim > 0):
            errors.append(f"dim must be a positive int, got {self.dim!r}")
        if not (is_int(self.z_dim) and self.z_dim > 0):
            errors.append(f"z_dim must be a positive int, got {self.z_dim!r}")
        if not self.dim_mult or not all(is_int(m) and m > 0 for m in self.dim_mult):
            errors.append(f"dim_mult must be a non-empty sequence of positive ints, got {self.dim_mult!r}")
        if not (is_int(self.num_res_blocks) and self.num_res_blocks >= 0):
            errors.append(f"num_res_blocks must be an int >= 0, got {self.num_res_blocks!r}")
        n_flags = max(len(self.dim_mult) - 1, 0)
        if len(self.temporal_upsample) != n_flags or not all(
            isinstance(f, bool) for f in self.temporal_upsample
        ):
            errors.append(
                f"temporal_upsample must hold {n_flags} bools (len(dim_mult) - 1), "
                f"got {self.temporal_upsample!r}"
            )
        for name in ("latent_mean", "latent_std"):
            values = getattr(self, name)
            if len(values) != self.z_dim or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                errors.append(f"{name} must hold z_dim={self.z_dim!r} numbers, got {len(values)}")
        if len(self.latent_std) == self.z_dim and not all(
            isinstance(v, (int, float)) and v > 0 for v in self.latent_std
        ):
            errors.append("latent_std must be strictly positive")
        if errors:
            raise ConfigError("invalid VAEConfig: " + "; ".join(errors))

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_upsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.1": VAEConfig(),
    # Same strides and latent statistics, ~0.4M parameters: for fast CPU tests.
    "tiny": VAEConfig(dim=8, num_res_blocks=1),
}


# ---------------------------------------------------------------------------
# PE-Core vision encoder (DySink's memory encoder); module: models/pe_core.py
# ---------------------------------------------------------------------------
POOL_TYPES = ("attn", "tok", "avg", "none")


@dataclass(frozen=True)
class PEConfig:
    """Vision-tower hyper-parameters (config.py ``PEConfig``, minus training-only ``drop_path``).
    ``output_dim=None`` means no final ``proj``: the tower then returns ``width``-dim features."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    output_dim: Optional[int] = None
    ls_init_value: Optional[float] = None  # None: no layer scale, so no ls_*.gamma tensors
    use_cls_token: bool = False
    use_abs_posemb: bool = True
    use_rope2d: bool = True
    pool_type: str = "attn"
    attn_pooler_heads: int = 8
    use_ln_pre: bool = True
    use_ln_post: bool = True

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"PEConfig.{field} {rule}")

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name in ("image_size", "patch_size", "width", "layers", "heads", "attn_pooler_heads"):
            value = getattr(self, name)
            check(is_int(value) and value > 0, name, f"must be a positive int, got {value!r}")
        check(self.output_dim is None or (is_int(self.output_dim) and self.output_dim > 0),
              "output_dim", f"must be None or a positive int, got {self.output_dim!r}")
        for name in ("use_cls_token", "use_abs_posemb", "use_rope2d", "use_ln_pre", "use_ln_post"):
            check(isinstance(getattr(self, name), bool), name, f"must be a bool, got {getattr(self, name)!r}")
        check(is_num(self.mlp_ratio) and int(self.width * self.mlp_ratio) > 0,
              "mlp_ratio", f"must give a positive MLP width, got {self.mlp_ratio!r}")
        check(self.ls_init_value is None or is_num(self.ls_init_value),
              "ls_init_value", f"must be None or a number, got {self.ls_init_value!r}")
        check(self.image_size % self.patch_size == 0, "image_size",
              f"({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        check(self.width % self.heads == 0, "width", f"({self.width}) must be divisible by heads ({self.heads})")
        # RoPE turns channel pairs, half of them by column and half by row.
        check(not self.use_rope2d or self.head_dim % 4 == 0, "width // heads",
              f"({self.head_dim}) must be divisible by 4 when use_rope2d")
        check(self.pool_type in POOL_TYPES, "pool_type", f"must be one of {POOL_TYPES}, got {self.pool_type!r}")
        check(self.pool_type != "attn" or self.width % self.attn_pooler_heads == 0, "attn_pooler_heads",
              f"({self.attn_pooler_heads}) must divide width ({self.width})")

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "PEConfig":
        """Build from a mapping, rejecting unknown keys with a ConfigError (a ValueError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"PEConfig got unknown field(s): {', '.join(unknown)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise ConfigError(f"PEConfig is missing field(s): {', '.join(missing)}")
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


PE_PRESETS = {
    # config.py "PE-Core-S16-384"; cls token on, pooler heads / abs posemb / rope from defaults.
    "pe-core-s16-384": PEConfig(image_size=384, patch_size=16, width=384, layers=12, heads=6,
                                mlp_ratio=4.0, output_dim=512, use_cls_token=True,
                                pool_type="attn", attn_pooler_heads=8),
    "tiny": PEConfig(image_size=32, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=4.0,
                     output_dim=16, use_cls_token=True, pool_type="attn", attn_pooler_heads=2),
}
