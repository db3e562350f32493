"""The public Python API: open a DySink stream, iterate its blocks, write a run.

    from dysink_deploy import api

    with api.open_stream("bundles/tiny-fp32", seed=0) as stream:       # onnxruntime, no torch needed
        for block in stream.blocks(12):
            block.frames        # uint8 [T, H, W, 3], this block's new video frames
            block.stats         # the block's entry of stats.json (windows, retrievals, gate, bank)

    with api.open_stream(model="tiny", backend="torch") as stream:      # PyTorch reference models
        stream.write("out/", blocks=12)                                 # video.mp4, stats.json, timeline.png

What is stable here (names, arguments, return types) is documented in docs/python-api.md; everything
else in the package may change between versions. Errors are `dysink_deploy.errors.DysinkError`
(one line, what is wrong and what to do).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from .config import ModelConfig, StreamConfig
from .errors import DysinkError
from .limits import check_blocks
from .runtime.backends import BACKENDS
from .runtime.builder import load_model_config, open_streamer, resolve_run
from .runtime.prompts import embeds_of
from .runtime.run import check_out_dir, open_out_dir, stream_to_dir
from .runtime.spec import RunSpec
from .runtime.stream import FeatureSource, NoiseSource, StepEvent, StepObserver, Streamer, frames_to_uint8

__all__ = ["open_stream", "RunSpec", "Stream", "Block", "StepEvent", "decode_latents", "encode_frames",
           "load_model_config", "BACKENDS"]


@dataclass(frozen=True)
class Block:
    """One generated block."""

    index: int
    frames: np.ndarray = field(repr=False)      # uint8 [T, H, W, 3]: 9 frames for block 0, 12 after
    stats: dict = field(repr=False)             # the stats.json entry of this block
    latent: np.ndarray = field(repr=False)      # float32 [C, F, h, w]: the block's clean latent
    feature: np.ndarray = field(repr=False)     # float32 [feature_dim]: its memory-bank feature


class Stream:
    """An open stream. Create it with `open_stream`; close it (or use `with`) to free device memory.

    One thread at a time: a call while another thread is inside one of its methods is refused (one
    line; nothing waits), and so is next_block / blocks / switch_prompt / write / close from inside
    its own callbacks (observer, noise, features), which run in the middle of a block; bank() and
    read_page() may be called there. Independent streams in separate threads are fine."""

    def __init__(self, streamer: Streamer, model: ModelConfig, run_config: dict):
        self._streamer = streamer
        self.model = model
        self.config: StreamConfig = streamer.cfg
        self.backend: str = streamer.backend.name
        self._run_config = run_config
        self._closed = False
        self._lock = threading.Lock()
        self._owner: int | None = None          # the thread inside a call (a block runs its callbacks there)

    @contextlib.contextmanager
    def _use(self, what: str, changes: bool = True, closed_ok: bool = False):
        """Hold the stream for one call: refuse another thread's call at once (a non-blocking lock),
        and, from inside this stream's own callbacks, a call that `changes` the stream; refuse a
        closed stream unless `closed_ok`."""
        me = threading.get_ident()
        if self._owner == me:
            if changes:
                raise DysinkError(f"{what} was called from inside this stream's observer / noise / features callback, "
                                  "in the middle of a block; return from the callback and call it after the block "
                                  "(bank() and read_page() may be called there)")
            self._check_open()
            yield
            return
        if not self._lock.acquire(blocking=False):
            raise DysinkError(f"{what}: this Stream is in use by another thread; a Stream serves one thread at a "
                              "time: open one stream per thread (api.open_stream), or hold your own lock around "
                              "its calls")
        self._owner = me
        try:
            if not closed_ok:
                self._check_open()
            yield
        finally:
            self._owner = None
            self._lock.release()

    # -- blocks ---------------------------------------------------------------------------------
    def next_block(self) -> Block:
        with self._use("next_block()"):
            record = self._streamer.step()
        return Block(record.index, record.frames, record.to_json(), record.latent, record.feature)

    def blocks(self, n: int) -> Iterator[Block]:
        """The next `n` blocks, one at a time (a stream continues where the last call stopped)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DysinkError(f"blocks(n): n must be an integer >= 0, got {n!r}")
        for _ in range(n):
            yield self.next_block()

    def switch_prompt(self, prompt_embeds, frame: int | None = None) -> None:
        """Switch to a new prompt (embeddings array or .safetensors file) at latent `frame` (default:
        the next block), with DySink's recache of the bank and the window."""
        if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool)):
            raise DysinkError(f"switch_prompt: frame must be an integer, got {frame!r}")
        with self._use("switch_prompt()"):
            if self.backend != "torch":
                self._streamer.backend.bundle.require_interactive()
            self._streamer.switch_prompt(embeds_of(prompt_embeds, self.model), frame)

    @property
    def blocks_done(self) -> int:
        return self._streamer.next_index

    # -- state ------------------------------------------------------------------------------------
    def bank(self) -> list[dict]:
        """The memory bank now: [{"start_frame", "page"}], oldest first."""
        with self._use("bank()", changes=False):
            return [{"start_frame": s, "page": p} for s, p in self._streamer.bank.entries()]

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies (k, v), float32 [layers, tokens, heads, head_dim], of one K/V pool page (the
        `page` of `bank()` entries or of a clean-pass StepEvent). A page that holds no block's K/V
        now (never written, or released) is refused as empty, not read as zeros."""
        if not isinstance(page, (int, np.integer)) or isinstance(page, bool):
            raise DysinkError(f"read_page: page must be an integer, got {page!r}")
        with self._use("read_page()", changes=False):
            return self._streamer.read_page(int(page))

    # -- writing ----------------------------------------------------------------------------------
    def write(self, out: str | os.PathLike, blocks: int, overwrite: bool = False, progress: bool = False):
        """Stream `blocks` more blocks into directory `out`: video.mp4 (playable after every block),
        stats.json, timeline.png, with dysink-run's guarantees (lock, no symlinks followed, only this
        project's outputs replaced with `overwrite`). Returns a RunResult (out, blocks, frames,
        seconds, interrupted, stats). Ctrl-C stops after closing the files."""
        check_blocks(blocks, "write(blocks=)")        # 1..MAX_BLOCKS, as dysink-run --blocks (stats.json)
        with self._use("write()"):
            if self._streamer.next_index:
                raise DysinkError("write: this stream has already produced blocks; a video starts at block 0: "
                                  "open a new stream to write a run")
            out = os.fspath(out)
            check_out_dir(out, overwrite)
            lock = open_out_dir(out, overwrite)
            try:
                config = {**self._run_config, "blocks": blocks, "stream": self.config.to_dict(),
                          "timesteps": self.config.timesteps()}
                return stream_to_dir(self._streamer, self.model, self.config, blocks, os.path.abspath(out), config,
                                     progress=progress)
            finally:
                lock.close()

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the backend's device and host memory; the stream cannot be used afterwards (a second
        close does nothing)."""
        with self._use("close()", closed_ok=True):     # refused while a block runs (here or in another thread)
            if not self._closed:
                self._closed = True
                self._streamer.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DysinkError("this stream is closed; open a new one with api.open_stream")

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"bank={self._streamer.bank.size}/{self.config.bank_capacity}"
        return f"Stream(model={self.model.name!r}, backend={self.backend!r}, blocks_done={self.blocks_done}, {state})"


# ---------------------------------------------------------------------------------------------------
_CHECKPOINT_KEYS = ("checkpoint", "lora", "vae", "pe", "use_ema")


def _spec(bundle, backend, model, checkpoints, weights_seed, device, precision, kernels, ort_provider, cuda_graph,
          threads, prompt_embeds, seed, settings, prompts, kv_cache_dtype="auto",
          bank_placement="device") -> RunSpec:
    """open_stream's keyword arguments as a RunSpec (the flexible ones translated: `model` may be a
    file, a dict or a ModelConfig; `checkpoints` a dict)."""
    backend = backend or ("onnxruntime" if bundle is not None else "torch")
    checkpoints = dict(checkpoints or {})
    unknown = sorted(set(checkpoints) - set(_CHECKPOINT_KEYS))
    if unknown:
        raise DysinkError(f"checkpoints: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(_CHECKPOINT_KEYS))}")
    if backend != "torch" and bundle is not None and any(checkpoints.get(k) for k in _CHECKPOINT_KEYS):
        raise DysinkError("a bundle already holds its weights: drop checkpoints or use backend='torch'")
    if backend == "torch" and bundle is not None:
        raise DysinkError("the torch backend builds its models from `model` and `checkpoints`, not a bundle; "
                          "drop bundle or use backend='onnxruntime'")
    if cuda_graph and backend == "onnxruntime":   # said in the API's words (RunSpec says it in the CLI's)
        raise DysinkError("cuda_graph applies to the tensorrt and torch backends only")
    if cuda_graph and backend == "torch" and not str(device).startswith("cuda"):
        raise DysinkError("cuda_graph on the torch backend needs device='cuda' (CUDA graphs replay GPU launches)")
    if settings is not None and not isinstance(settings, (Mapping, StreamConfig)):
        raise DysinkError(f"settings must be a dict of stream settings or a StreamConfig, got {type(settings).__name__}")
    if isinstance(settings, StreamConfig):
        settings = settings.to_dict()
    if prompts is not None and not isinstance(prompts, (list, tuple)):
        raise DysinkError("prompts must be a list of (frame, embeddings) pairs")
    source = {}
    if backend == "torch":                       # a bundle fixes the model: `model` is read without one only
        source = {"model_config": load_model_config(model)}
    return RunSpec(backend=backend, bundle=None if bundle is None else os.fspath(bundle), **source,
                   checkpoint=checkpoints.get("checkpoint"), lora=checkpoints.get("lora"), vae=checkpoints.get("vae"),
                   pe=checkpoints.get("pe"), use_ema=bool(checkpoints.get("use_ema", False)), weights_seed=weights_seed,
                   device=device, precision=precision, kernels=kernels, ort_provider=ort_provider,
                   cuda_graph=cuda_graph, threads=threads, seed=seed, prompt_embeds=prompt_embeds,
                   prompts=None if prompts is None else list(prompts), settings=dict(settings or {}),
                   kv_cache_dtype=kv_cache_dtype, bank_placement=bank_placement)


def open_stream(bundle: str | os.PathLike | RunSpec | None = None, *, backend: str | None = None,
                model: str | os.PathLike | Mapping | ModelConfig = "tiny",
                checkpoints: Mapping[str, Any] | None = None, weights_seed: int = 0,
                device: str = "cpu", precision: str = "fp32", kernels: str = "auto",
                ort_provider: str = "cpu", cuda_graph: bool = False, threads: int | None = None,
                prompt_embeds: np.ndarray | str | os.PathLike | None = None, seed: int = 0,
                settings: Mapping[str, Any] | StreamConfig | None = None,
                noise: NoiseSource | None = None, features: FeatureSource | None = None,
                observer: StepObserver | None = None,
                prompts: list[tuple[int, Any]] | None = None, spec: RunSpec | None = None,
                kv_cache_dtype: str = "auto", bank_placement: str = "device") -> Stream:
    """Open a stream.

    From a RunSpec (`dysink_deploy.runtime.spec`, what dysink-run builds from its flags):
    `open_stream(spec)` or `open_stream(spec=spec)`; the other arguments must then be left out
    (the hooks aside).
    From a bundle (`dysink-export onnx`; + `dysink-export build` for tensorrt): `bundle=DIR`,
    backend "onnxruntime" (default with a bundle) or "tensorrt". The bundle fixes model, weights,
    precision and the graph-baked settings; `settings` may change the host-side ones (dedup
    threshold, eviction, denoising steps, shift).
    From PyTorch models (backend "torch", the default without a bundle): `model` is a preset name,
    a ModelConfig, a dict or a JSON file; `checkpoints` = {"checkpoint", "lora", "vae", "pe",
    "use_ema"} (random weights from `weights_seed` where none is given); `device`, `precision`
    (fp32 / fp16 / bf16), `kernels` (auto / triton / reference); `settings` any stream settings.
    kv_cache_dtype: the K/V pages' storage, auto (the model precision) / bf16 / fp8 / int8 (8 bits
    with per-token-and-head scales); a bundle fixes it at export ("auto" takes the bundle's).
    bank_placement: device, or host (the bank's K/V pages in host memory, the device pool cut to the
    window, the block being made and top_k staging slots); a bundle fixes it at export.

    prompt_embeds: umT5 output [text_len, text_dim] as an array or a .safetensors file (the tiny
    random model has an embedded default). seed: the noise seed.
    Injection (see runtime.stream.Streamer): noise(block, shape, steps) -> (x_T, eps),
    features(block, frames uint8 [T, H, W, 3], latent) -> unit feature, observer(StepEvent).
    prompts: prompt switches [(latent frame, embeddings array or .safetensors file)], applied at the
    first block starting at or after the frame, with DySink's recache (a bundle needs --interactive);
    or later with `Stream.switch_prompt`.
    """
    if isinstance(bundle, RunSpec):
        if spec is not None:
            raise DysinkError("open_stream: give the RunSpec once (positionally or as spec=)")
        bundle, spec = None, bundle
    for name, fn in (("noise", noise), ("features", features), ("observer", observer)):
        if fn is not None and not callable(fn):
            raise DysinkError(f"{name} must be callable, got {type(fn).__name__}")
    if spec is None:
        spec = _spec(bundle, backend, model, checkpoints, weights_seed, device, precision, kernels, ort_provider,
                     cuda_graph, threads, prompt_embeds, seed, settings, prompts, kv_cache_dtype,
                     bank_placement)
    elif not isinstance(spec, RunSpec):
        raise DysinkError(f"spec must be a RunSpec, got {type(spec).__name__}")
    elif bundle is not None:
        raise DysinkError("open_stream: with a RunSpec, name the bundle in it (RunSpec.bundle), not beside it")
    run = resolve_run(spec)
    streamer, run_config = open_streamer(spec, resolved=run, noise=noise, features=features, observer=observer)
    run_config = {k: v for k, v in run_config.items() if k not in ("blocks", "stream", "timesteps")}
    return Stream(streamer, run.model, {**run_config, "api": True})


# ---------------------------------------------------------------------------------------------------
# Parts on their own (PyTorch reference models)
# ---------------------------------------------------------------------------------------------------
def _parts(model, vae: str | None, pe: str | None, weights_seed: int, device: str):
    from .models.factory import CheckpointPaths, build_models     # lazy: torch

    cfg = load_model_config(model)
    return cfg, build_models(cfg, CheckpointPaths(vae=vae, pe=pe), seed=weights_seed).to(device).eval()


def decode_latents(latents: np.ndarray, *, model="tiny", vae: str | None = None, weights_seed: int = 0,
                   device: str = "cpu") -> np.ndarray:
    """Decode a latent clip float32 [C, F, h, w] with the Wan VAE decoder (one call, the reference's
    whole-video decode) -> uint8 frames [1 + 4 (F - 1), 8h, 8w, 3]."""
    import torch

    cfg, models = _parts(model, vae, None, weights_seed, device)
    z = np.asarray(latents)
    if z.ndim != 4 or z.shape[0] != cfg.vae.z_dim or not np.issubdtype(z.dtype, np.floating):
        raise DysinkError(f"latents must be a float array [{cfg.vae.z_dim}, F, h, w], got {z.dtype} {z.shape}")
    if not np.isfinite(z).all():
        raise DysinkError("latents hold NaN or Inf values")
    with torch.inference_mode():
        frames = models.vae.decode(torch.from_numpy(np.ascontiguousarray(z, np.float32))[None].to(device))
    return frames_to_uint8(frames[0].float().cpu().numpy())


def encode_frames(frames: np.ndarray, *, model="tiny", pe: str | None = None, weights_seed: int = 0,
                  device: str = "cpu") -> np.ndarray:
    """The memory-bank feature of a clip with PE-Core, as DySink computes it -> unit float32 [dim].

    frames: uint8 [T, H, W, 3] (0..255, what `Block.frames` holds), or float [3, T, H, W] in
    [-1, 1] (the VAE decoder's output); other ranges are refused, not clipped."""
    import torch

    cfg, models = _parts(model, None, pe, weights_seed, device)
    x = np.asarray(frames)
    if x.dtype == np.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise DysinkError(f"uint8 frames must be [T, H, W, 3], got {x.shape}")
        x = x.astype(np.float32).transpose(3, 0, 1, 2) / 127.5 - 1.0
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4 or x.shape[0] != 3:
            raise DysinkError(f"float frames must be [3, T, H, W] in [-1, 1], got {x.shape}")
        if not np.isfinite(x).all():
            raise DysinkError("frames hold NaN or Inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise DysinkError(f"float frames must lie in [-1, 1] (the VAE's range), got [{lo:.4g}, {hi:.4g}]; "
                              "pass uint8 frames for 0..255 pixels")
    else:
        raise DysinkError(f"frames must be uint8 [T, H, W, 3] or float [3, T, H, W], got {x.dtype}")
    with torch.inference_mode():
        feature = models.pe.block_feature(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None].to(device))
    return feature[0].float().cpu().numpy()
