"""Validated configuration dataclasses: model presets and stream settings.

Torch-free on purpose: the runtime (numpy only) reads these too. Every
dataclass checks itself in ``__post_init__`` and raises `ConfigError` with a
message that names the offending field(s). CLI defaults come from here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from .errors import ConfigError


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _positive_ints(obj: Any, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}",
        )


def _typed(value: Any, kind: str) -> bool:
    """Does `value` (from JSON) fit the field annotation `kind`?"""
    if kind.startswith("Optional["):
        return value is None or _typed(value, kind[len("Optional["):-1])
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple["):
        inner = kind[len("tuple["):-1].split(", ")
        if not isinstance(value, (list, tuple)):
            return False
        if inner[-1] == "...":
            return all(_typed(v, inner[0]) for v in value)
        return len(value) == len(inner) and all(_typed(v, k) for v, k in zip(value, inner))
    return True


def _strict_from_dict(cls, values: Any, where: str):
    """cls(**values) with unknown, missing and mistyped fields refused by name (ConfigError)."""
    name = cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {name} must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: {name} has unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in values]
    if missing:
        raise ConfigError(f"{where}: {name} is missing field(s) {', '.join(missing)}")
    for key, value in values.items():
        kind = fields[key].type
        if not _typed(value, kind):
            raise ConfigError(f"{where}: {name}.{key} must be {kind.replace('Optional[', 'null or ').rstrip(']') if kind.startswith('Optional[') else kind}, got {value!r}")
    return cls(**values)


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
        _positive_ints(self, ["dim", "layers", "heads", "ffn_dim", "freq_dim", "in_dim",
                              "out_dim", "text_dim", "text_len", "lora_rank"])
        _require(self.dim % self.heads == 0,
                 f"DiTConfig.dim ({self.dim}) must be divisible by DiTConfig.heads ({self.heads})")
        _require(self.head_dim % 2 == 0 and self.head_dim >= 12,
                 f"DiTConfig.dim / heads = {self.head_dim} must be even and >= 12 (3D RoPE splits it)")
        _require(len(self.patch) == 3 and all(isinstance(p, int) and p > 0 for p in self.patch),
                 f"DiTConfig.patch must be three positive integers, got {self.patch!r}")
        _require(self.patch[0] == 1, "DiTConfig.patch[0] must be 1: the stream works on whole latent frames")
        _require(self.freq_dim % 2 == 0, f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        _require(self.eps > 0, f"DiTConfig.eps must be > 0, got {self.eps}")

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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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

        if not (_is_int(self.dim) and self.dim > 0):
            errors.append(f"dim must be a positive int, got {self.dim!r}")
        if not (_is_int(self.z_dim) and self.z_dim > 0):
            errors.append(f"z_dim must be a positive int, got {self.z_dim!r}")
        if not self.dim_mult or not all(_is_int(m) and m > 0 for m in self.dim_mult):
            errors.append(f"dim_mult must be a non-empty sequence of positive ints, got {self.dim_mult!r}")
        if not (_is_int(self.num_res_blocks) and self.num_res_blocks >= 0):
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

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

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


# ---------------------------------------------------------------------------
# Stream settings (inference_sink0_topk2.yaml of the reference)
# ---------------------------------------------------------------------------
FEATURE_MODES = ("block-alone", "streamed")
EVICTION_RULES = ("lru", "fifo")


@functools.lru_cache(maxsize=16)
def flow_match_table(shift: float, train_steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas, timesteps) float32 [train_steps]: the reference scheduler's table, value for value.

    The reference (DySink's utils/scheduler.py, FlowMatchScheduler with sigma_min=0,
    extra_one_step=True, set_timesteps(1000)) computes in float32 torch ops:
        s = linspace(1, 0, 1001)[:-1];  sigma = shift*s / (1 + (shift-1)*s);  t = sigma * 1000
    Reproduced here in numpy, each op rounded to float32 as torch rounds it. torch's CPU linspace
    (2.13) forms element i as start + step*i below the midpoint and end - step*(n-1-i) from it,
    each with a single rounding (a fused multiply-add); the product of two float32 values is exact
    in float64, so float64 arithmetic rounded once to float32 gives the same value.
    tests/test_config.py checks every entry against torch itself for several shifts.
    """
    f32, f64 = np.float32, np.float64
    n = train_steps + 1
    start, end = f32(1.0), f32(0.0)
    step = (end - start) / f32(n - 1)
    i = np.arange(n, dtype=f64)
    low = (f64(step) * i + f64(start)).astype(f32)
    high = (f64(-step) * (n - 1 - i) + f64(end)).astype(f32)
    s = np.where(np.arange(n) < n // 2, low, high)[:-1]
    sigma = (f32(shift) * s) / (f32(1.0) + f32(shift - 1.0) * s)
    sigma = sigma.astype(f32)
    table = (sigma * f32(train_steps)).astype(f32)
    sigma.flags.writeable = False
    table.flags.writeable = False
    return sigma, table


@dataclass(frozen=True)
class StreamConfig:
    """How a video is streamed. Defaults are DySink's released configuration.

    block_frames: latent frames per block. local_attn_size: frames of the
    local window, current block included. sink_size: fixed LongLive-style
    sink frames at the start (0 in DySink). top_k: retrieved sinks per block.
    gate_threshold: a sink is dropped when the fraction of heads preferring it
    over the local window is > this. dedup_threshold: a block is not stored
    in the bank when its cosine to an entry is > this.
    denoising_steps / shift: the flow-matching schedule before warping.
    height / width: output pixels. bank_capacity: bank entries kept on the
    device (the reference is unbounded; past capacity `eviction` decides).
    feature_mode: "block-alone" decodes each block without the VAE cache for
    the bank feature like the reference; "streamed" reuses the streamed
    frames (one decode per block; slightly different features).
    sink_kv_bf16: round retrieved K/V to bf16 before use, as the reference
    does (a no-op in bf16 runs).
    """

    block_frames: int = 3
    local_attn_size: int = 9
    sink_size: int = 0
    top_k: int = 2
    gate_threshold: float = 0.8
    dedup_threshold: float = 0.95
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    height: int = 480
    width: int = 832
    bank_capacity: int = 16
    eviction: str = "lru"
    feature_mode: str = "block-alone"
    sink_kv_bf16: bool = True

    def __post_init__(self) -> None:
        # Types first: a string or null where a number belongs is an error, not a comparison.
        for name in ("gate_threshold", "dedup_threshold", "shift"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                     f"StreamConfig.{name} must be a finite number, got {value!r}")
        for name in ("eviction", "feature_mode"):
            _require(isinstance(getattr(self, name), str),
                     f"StreamConfig.{name} must be a string, got {getattr(self, name)!r}")
        _require(isinstance(self.denoising_steps, (list, tuple)),
                 f"StreamConfig.denoising_steps must be a list of integers, got {self.denoising_steps!r}")
        object.__setattr__(self, "denoising_steps", tuple(self.denoising_steps))
        _positive_ints(self, ["block_frames", "local_attn_size", "height", "width", "bank_capacity"])
        for name in ("sink_size", "top_k"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                     f"StreamConfig.{name} must be an integer >= 0, got {value!r}")
        b = self.block_frames
        _require(self.local_attn_size % b == 0 and self.local_attn_size >= b,
                 f"StreamConfig.local_attn_size ({self.local_attn_size}) must be a multiple of "
                 f"StreamConfig.block_frames ({b}) and at least one block")
        _require(self.sink_size % b == 0,
                 f"StreamConfig.sink_size ({self.sink_size}) must be a multiple of StreamConfig.block_frames ({b})")
        # The reference gates all fixed-sink frames as one group; our attention
        # op gates per page, which is the same only for a one-block sink.
        _require(self.sink_size in (0, b),
                 f"StreamConfig.sink_size ({self.sink_size}) must be 0 or one block "
                 f"(StreamConfig.block_frames = {b}): larger fixed sinks are not supported yet")
        _require(self.sink_size < self.local_attn_size,
                 f"StreamConfig.sink_size ({self.sink_size}) must be smaller than "
                 f"StreamConfig.local_attn_size ({self.local_attn_size})")
        _require(0.0 <= self.gate_threshold <= 1.0,
                 f"StreamConfig.gate_threshold must lie in [0, 1], got {self.gate_threshold}")
        _require(-1.0 <= self.dedup_threshold <= 1.0,
                 f"StreamConfig.dedup_threshold must lie in [-1, 1], got {self.dedup_threshold}")
        steps = self.denoising_steps
        _require(len(steps) > 0 and all(isinstance(s, int) and 0 < s <= 1000 for s in steps),
                 f"StreamConfig.denoising_steps must be integers in (0, 1000], got {steps!r}")
        _require(all(a > b_ for a, b_ in zip(steps, steps[1:])),
                 f"StreamConfig.denoising_steps must be strictly decreasing, got {steps!r}")
        _require(self.shift > 0, f"StreamConfig.shift must be > 0, got {self.shift}")
        for name in ("height", "width"):
            _require(getattr(self, name) % 16 == 0,
                     f"StreamConfig.{name} ({getattr(self, name)}) must be a multiple of 16 "
                     "(VAE stride 8 x patch 2)")
        _require(self.bank_capacity >= self.top_k,
                 f"StreamConfig.bank_capacity ({self.bank_capacity}) must be >= StreamConfig.top_k "
                 f"({self.top_k}), or the window would never shrink back")
        _require(self.eviction in EVICTION_RULES,
                 f"StreamConfig.eviction must be one of {', '.join(EVICTION_RULES)}, got {self.eviction!r}")
        _require(self.feature_mode in FEATURE_MODES,
                 f"StreamConfig.feature_mode must be one of {', '.join(FEATURE_MODES)}, got {self.feature_mode!r}")
        _require(isinstance(self.sink_kv_bf16, bool), "StreamConfig.sink_kv_bf16 must be true or false")

    # -- derived quantities (the scheduler and the engines agree on these) --
    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def queue_len(self) -> int:
        """Block features kept as retrieval queries (local_attn_size // 3)."""
        return self.local_attn_size // self.block_frames

    def window_frames(self, bank_size: int) -> int:
        """Local window (frames, current block included) for a given bank size."""
        missing = max(0, self.top_k - bank_size)
        return self.local_attn_size + self.block_frames * missing

    @property
    def fixed_sink_pages(self) -> int:
        return self.sink_size // self.block_frames

    @property
    def local_slots(self) -> int:
        """Page slots for past local-window blocks: the widest window, less the current block."""
        return self.window_frames(0) // self.block_frames - 1

    @property
    def sink_slots(self) -> int:
        """Page slots for sinks: fixed sink pages + retrieved ones."""
        return self.fixed_sink_pages + self.top_k

    @property
    def window_history(self) -> int:
        """Past blocks whose pages the window may still need."""
        return self.local_slots

    @property
    def pool_pages(self) -> int:
        """Pages in the K/V pool: bank + window history + the block being made + fixed sinks."""
        return self.bank_capacity + self.window_history + 1 + self.fixed_sink_pages

    def timesteps(self) -> list[float]:
        """Warped model timesteps, exactly the reference's float32 values.

        The reference (warp_denoising_step) indexes its scheduler's table: step k -> table[1000 - k],
        table = timesteps of FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True) at 1000
        training steps (see `flow_match_table`). For the released steps: 1000.0, 937.5,
        833.3333129882812, 625.0.
        """
        _, table = flow_match_table(self.shift)
        return [float(table[1000 - step]) for step in self.denoising_steps]

    def sigmas(self) -> list[float]:
        """sigma of each step as the reference's add_noise finds it: the table's float32 sigma at the
        step's entry (not t / 1000 rounded, which differs by an ulp at some steps)."""
        sigma, _ = flow_match_table(self.shift)
        return [float(sigma[1000 - step]) for step in self.denoising_steps]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stream_config_from_dict(data: dict, base: StreamConfig | None = None) -> StreamConfig:
    """Build a StreamConfig from a (possibly partial) dict, rejecting unknown keys."""
    base = base or StreamConfig()
    known = {f.name for f in dataclasses.fields(StreamConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown stream setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **data)


def dumps(obj: Any) -> str:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True)


# ---------------------------------------------------------------------------
# Model presets: the three networks + the resolution they stream at by default
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    pe: PEConfig
    height: int
    width: int

    def __post_init__(self) -> None:
        _require(self.dit.in_dim == self.vae.z_dim and self.dit.out_dim == self.vae.z_dim,
                 f"ModelConfig {self.name!r}: DiTConfig.in_dim/out_dim ({self.dit.in_dim}/{self.dit.out_dim}) "
                 f"must equal VAEConfig.z_dim ({self.vae.z_dim})")

    def default_stream(self, **overrides: Any) -> StreamConfig:
        """The released stream settings at this preset's resolution, with overrides."""
        values = {"height": self.height, "width": self.width, **overrides}
        return stream_config_from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model config") -> "ModelConfig":
        """Inverse of `to_dict`, strict: unknown, missing or mistyped fields are refused by name, and
        the values are validated with the presets' messages (a ConfigError naming `where`)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: ModelConfig must be a JSON object, got {type(data).__name__}")
        parts = {"dit": DiTConfig, "vae": VAEConfig, "pe": PEConfig}
        top = {k: v for k, v in data.items() if k not in parts}
        for key in ("name", "height", "width"):
            if key not in data:
                raise ConfigError(f"{where}: ModelConfig is missing field {key}")
        unknown = sorted(set(top) - {"name", "height", "width"})
        if unknown:
            raise ConfigError(f"{where}: ModelConfig has unknown field(s) {', '.join(unknown)}; "
                              "known: name, height, width, dit, vae, pe")
        if not isinstance(data["name"], str) or not data["name"]:
            raise ConfigError(f"{where}: ModelConfig.name must be a non-empty string, got {data['name']!r}")
        for key in ("height", "width"):
            if not _typed(data[key], "int") or data[key] <= 0:
                raise ConfigError(f"{where}: ModelConfig.{key} must be a positive integer, got {data[key]!r}")
        built = {}
        for key, cls_ in parts.items():
            if key not in data:
                raise ConfigError(f"{where}: ModelConfig is missing field {key}")
            try:
                built[key] = _strict_from_dict(cls_, data[key], where)
            except ConfigError as exc:
                text = str(exc)
                raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None
        try:
            return cls(name=data["name"], height=data["height"], width=data["width"], **built)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


MODEL_PRESETS = {
    "wan2.1-t2v-1.3b": ModelConfig("wan2.1-t2v-1.3b", DIT_PRESETS["wan2.1-t2v-1.3b"], VAE_PRESETS["wan2.1"],
                                   PE_PRESETS["pe-core-s16-384"], height=480, width=832),
    # Random weights, 64x96 pixels: a block in well under a second on a CPU core.
    "tiny": ModelConfig("tiny", DIT_PRESETS["tiny"], VAE_PRESETS["tiny"], PE_PRESETS["tiny"], height=64, width=96),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


def model_config_from_dict(data: dict) -> ModelConfig:
    """Inverse of `ModelConfig.to_dict` (bundle manifests)."""
    return ModelConfig.from_dict(data, where="bundle model config")

def model_config_from_file(path: str, what: str = "--model-config") -> ModelConfig:
    """A ModelConfig from a JSON file: a ModelConfig's `to_dict`, or a bundle.json (its model)."""
    import os

    from .jsonfile import read_json_object

    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist or is not a file")
    data = read_json_object(path, what, 1 << 20, "model configuration")
    if "format_version" in data and isinstance(data.get("model"), dict):     # a bundle.json
        data = data["model"]
    return ModelConfig.from_dict(data, where=f"{what} {path!r}")
