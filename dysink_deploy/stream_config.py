"""How a video is streamed: StreamConfig, its checks and the reference scheduler's timestep table.

Torch-free (the numpy-only runtime reads it); `StreamConfig.__post_init__` raises `ConfigError`
naming the offending field(s).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .validation import is_int, positive_ints, require

__all__ = ["EVICTION_RULES", "FEATURE_MODES", "StreamConfig", "flow_match_table", "stream_config_from_dict"]


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
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                    f"StreamConfig.{name} must be a finite number, got {value!r}")
        for name in ("eviction", "feature_mode"):
            require(isinstance(getattr(self, name), str),
                    f"StreamConfig.{name} must be a string, got {getattr(self, name)!r}")
        require(isinstance(self.denoising_steps, (list, tuple)),
                f"StreamConfig.denoising_steps must be a list of integers, got {self.denoising_steps!r}")
        object.__setattr__(self, "denoising_steps", tuple(self.denoising_steps))
        positive_ints(self, ["block_frames", "local_attn_size", "height", "width", "bank_capacity"])
        for name in ("sink_size", "top_k"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"StreamConfig.{name} must be an integer >= 0, got {value!r}")
        b = self.block_frames
        require(self.local_attn_size % b == 0 and self.local_attn_size >= b,
                f"StreamConfig.local_attn_size ({self.local_attn_size}) must be a multiple of "
                f"StreamConfig.block_frames ({b}) and at least one block")
        require(self.sink_size % b == 0,
                f"StreamConfig.sink_size ({self.sink_size}) must be a multiple of StreamConfig.block_frames ({b})")
        # The reference gates all fixed-sink frames as one group; our attention
        # op gates per page, which is the same only for a one-block sink.
        require(self.sink_size in (0, b),
                f"StreamConfig.sink_size ({self.sink_size}) must be 0 or one block "
                f"(StreamConfig.block_frames = {b}): larger fixed sinks are not supported yet")
        require(self.sink_size < self.local_attn_size,
                f"StreamConfig.sink_size ({self.sink_size}) must be smaller than "
                f"StreamConfig.local_attn_size ({self.local_attn_size})")
        require(0.0 <= self.gate_threshold <= 1.0,
                f"StreamConfig.gate_threshold must lie in [0, 1], got {self.gate_threshold}")
        require(-1.0 <= self.dedup_threshold <= 1.0,
                f"StreamConfig.dedup_threshold must lie in [-1, 1], got {self.dedup_threshold}")
        steps = self.denoising_steps
        require(len(steps) > 0 and all(is_int(s) and 0 < s <= 1000 for s in steps),    # True is not a step
                f"StreamConfig.denoising_steps must be integers in (0, 1000], got {steps!r}")
        require(all(a > b_ for a, b_ in zip(steps, steps[1:])),
                f"StreamConfig.denoising_steps must be strictly decreasing, got {steps!r}")
        require(self.shift > 0, f"StreamConfig.shift must be > 0, got {self.shift}")
        for name in ("height", "width"):
            require(getattr(self, name) % 16 == 0,
                    f"StreamConfig.{name} ({getattr(self, name)}) must be a multiple of 16 "
                    "(VAE stride 8 x patch 2)")
        require(self.bank_capacity >= self.top_k,
                f"StreamConfig.bank_capacity ({self.bank_capacity}) must be >= StreamConfig.top_k "
                f"({self.top_k}), or the window would never shrink back")
        require(self.eviction in EVICTION_RULES,
                f"StreamConfig.eviction must be one of {', '.join(EVICTION_RULES)}, got {self.eviction!r}")
        require(self.feature_mode in FEATURE_MODES,
                f"StreamConfig.feature_mode must be one of {', '.join(FEATURE_MODES)}, got {self.feature_mode!r}")
        require(isinstance(self.sink_kv_bf16, bool), "StreamConfig.sink_kv_bf16 must be true or false")

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
