"""The chunk loop: one block at a time over any backend.

Per block (ALGORITHM.md sections 2-6):
  1. window size from the bank size; pages of the local window and fixed sink
  2. retrieval over the bank with the queued block features (host sync: the
     scores are reported, and the page ids are an input of every step)
  3. denoising steps, all enqueued without reading anything back
  4. the clean-context pass at t = 0 writes the block's K/V into a new page
  5. streaming VAE decode -> frames (with, in feature mode block-alone, the block-alone decode of
     the feature: `decode_both`, which a backend may overlap); memory feature -> dedup -> bank
Gate ratios and the feature are read back once, after the block.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DysinkError

from ..config import DiTConfig, StreamConfig
from ..rope import rope_phases
from .backends.base import Backend
from .bank import MemoryBank
from .heap import TRIM_EVERY, release_free_heap
from .noise import block_noise
from .pages import PageAllocator
from .schedule import BlockContext, ContextScheduler, QueryQueue


@dataclass
class BlockRecord:
    """What happened in one block; `to_json` is its entry in stats.json."""

    index: int
    start_frame: int
    window_frames: int
    bank_size: int
    retrieved: list[dict]
    gate: list[dict]
    fixed_sink_gate: list[dict]
    stored: bool
    max_similarity: float | None
    evicted_start_frame: int | None
    timings_ms: dict
    frames: np.ndarray = field(repr=False)        # uint8 [T, H, W, 3]
    latent: np.ndarray = field(repr=False)        # float32 [C, F, h, w]
    feature: np.ndarray = field(repr=False)       # float32 [F]
    prompt_switch: dict | None = None             # the recache done at the top of this block, if any
    stored_reason: str = ""                       # why the block was (not) stored in the bank

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "start_frame": self.start_frame,
            "window_frames": self.window_frames,
            "bank_size": self.bank_size,
            "retrieved": self.retrieved,
            "gate": self.gate,
            "fixed_sink_gate": self.fixed_sink_gate,
            "stored": self.stored,
            "stored_reason": self.stored_reason,
            "max_similarity": self.max_similarity,
            "evicted_start_frame": self.evicted_start_frame,
            "frames": int(self.frames.shape[0]),
            "prompt_switch": self.prompt_switch,
            "timings_ms": self.timings_ms,
        }


def _finite(values: np.ndarray, index: int, what: str) -> None:
    """Stop at the first block whose host-side values are NaN / Inf (checked on what comes back
    anyway: no extra device sync)."""
    if not np.isfinite(values).all():
        raise DysinkError(f"block {index}: {what} hold NaN or Inf values; the weights or inputs produce "
                          "non-finite numbers (check the checkpoint with dysink-export verify-checkpoint, "
                          "or use a wider precision); the blocks before it are kept")


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    x = np.clip((frames.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0)
    return np.round(x).astype(np.uint8).transpose(1, 2, 3, 0)


@dataclass(frozen=True)
class StepEvent:
    """What a per-step observer receives: one denoising step, or (step == len(timesteps), t == 0)
    the clean pass, which also names the pool page the block's K/V went to."""

    block: int
    step: int
    t: float
    x0: np.ndarray                 # float32 [C, F, h, w], a host copy
    ratios: np.ndarray             # float32 [layers, sink slots]: the gate's ratios of this pass
    page: int | None = None        # clean pass only


NoiseSource = Callable[[int, tuple, int], tuple]            # (block, shape, steps) -> (x_T, eps per renoise)
FeatureSource = Callable[[int, np.ndarray, np.ndarray], np.ndarray]  # (block, frames uint8, latent) -> feature
StepObserver = Callable[[StepEvent], None]


class Streamer:
    """Streams blocks of one video from `backend`. Iterate with `blocks(n)`.

    Injection points (all optional; the public face is dysink_deploy.api):
      noise(block_index, latent_shape, steps) -> (x_T, eps): x_T float32 latent_shape, eps a sequence
          of steps - 1 arrays of that shape (the renoise draw of each step after the first);
          default: numpy PCG64 keyed by (seed, block).
      features(block_index, frames, latent) -> feature: the bank feature [feature_dim], unit norm,
          from the block's uint8 frames [T, H, W, 3] and float32 latent [C, F, h, w]; when given,
          the block-alone decode and the memory encoder are skipped.
      observer(StepEvent): called after every denoising step and the clean pass, with host copies
          (one device-to-host read per step: slower on a GPU).
    pipeline: whether `blocks` pipelines the streamed VAE decode of block N with block N+1 (None:
      where the backend gains from it, `Backend.pipelines_decodes`; only in feature mode block-alone,
      without an injected feature source, where the next block needs none of this block's frames).
    """

    def __init__(self, backend: Backend, dit: DiTConfig, stream: StreamConfig,
                 prompt_embeds: np.ndarray, seed: int = 0, noise: NoiseSource | None = None,
                 features: FeatureSource | None = None, observer: StepObserver | None = None,
                 prompts: list[tuple[int, np.ndarray]] | None = None, pipeline: bool | None = None):
        self.backend, self.dit, self.cfg, self.seed = backend, dit, stream, seed
        self.pipeline = pipeline
        self.noise, self.features, self.observer = noise, features, observer
        # Prompt switches: (latent frame, embeddings), applied at the top of the first block whose
        # start frame is >= the frame, at most one per block, in order (ALGORITHM.md section 9).
        self._prompts: list[tuple[int, np.ndarray]] = []
        self._prompt_blocks: list[int] = []         # the block each scheduled switch applies at
        self._next_prompt = 0
        self.prompt_index = 0
        for frame, embeds in prompts or []:
            self.switch_prompt(embeds, frame)
        # The clean latents of the widest window's blocks (the window recache runs on them).
        self.recent_latents: deque[tuple[int, np.ndarray]] = deque(maxlen=stream.window_frames(0) // stream.block_frames)
        lat_h, lat_w = stream.latent_hw
        self.latent_shape = (dit.in_dim, stream.block_frames, lat_h, lat_w)
        self.grid = (lat_h // dit.patch[1], lat_w // dit.patch[2])
        self.pages = PageAllocator(stream.pool_pages)
        self.scheduler = ContextScheduler(stream, self.pages)
        self.bank = MemoryBank(stream.bank_capacity, backend.feature_dim, stream.eviction)
        self.queue = QueryQueue(stream.queue_len, backend.feature_dim)
        self.timesteps = stream.timesteps()
        self.sigmas = stream.sigmas()
        self.next_index = 0
        self._later = None    # (record, Future) the last deferred step left (pipelined `blocks`)
        with backend.thread_scope():
            backend.start(prompt_embeds, stream.pool_pages)

    # -- retrieval ----------------------------------------------------------
    def _retrieve(self, ctx: BlockContext) -> None:
        cfg = self.cfg
        if cfg.top_k == 0 or len(self.queue) == 0 or self.bank.size == 0:
            return
        queries, valid = self.queue.arrays()
        slots, scores = self.backend.retrieve(self.bank.feats, self.bank.start, queries, valid,
                                              ctx.start_frame, ctx.window_frames, cfg.sink_size, cfg.top_k)
        for slot, score in zip(slots.tolist(), scores.tolist()):
            if slot < 0:
                continue
            ctx.retrieved_pages.append(int(self.bank.page[slot]))
            ctx.retrieved_starts.append(int(self.bank.start[slot]))
            ctx.retrieved_scores.append(float(score))
        self.bank.mark_retrieved(slots, ctx.index)

    # -- prompt switches ------------------------------------------------------
    def switch_prompt(self, prompt_embeds: np.ndarray, frame: int | None = None) -> None:
        """Schedule a prompt switch at latent `frame` (default: the next block's start). Frames must
        not decrease along the schedule."""
        if self.cfg.fixed_sink_pages:
            raise DysinkError("prompt switches with a fixed sink (sink_size > 0) are not supported: the "
                              "reference's interactive pipeline runs without one (sink_size 0)")
        frame = self.next_index * self.cfg.block_frames if frame is None else int(frame)
        if frame < 0 or (self._prompts and frame < self._prompts[-1][0]):
            raise DysinkError(f"prompt switch frames must be >= 0 and non-decreasing, got {frame} after "
                              f"{self._prompts[-1][0] if self._prompts else 'none'}")
        embeds = np.ascontiguousarray(prompt_embeds, dtype=np.float32)
        if embeds.shape != (self.dit.text_len, self.dit.text_dim) or not np.isfinite(embeds).all():
            raise DysinkError(f"switch prompt embeddings must be finite, of shape {(self.dit.text_len, self.dit.text_dim)}, "
                              f"got {embeds.shape}")
        # The block it applies at: the first one starting at or after the frame, not one already made.
        b = self.cfg.block_frames
        block = max(-(-frame // b), getattr(self, "next_index", 0))     # (scheduled from __init__: 0)
        if self._prompt_blocks and block <= self._prompt_blocks[-1]:
            raise DysinkError(f"two prompt switches in block {self._prompt_blocks[-1]} (frames {self._prompts[-1][0]} and "
                              f"{frame}): one block applies one switch, and this one would slip to a later block "
                              f"without a word; give it a frame from {(self._prompt_blocks[-1] + 1) * b} on")
        self._prompts.append((frame, embeds))
        self._prompt_blocks.append(block)

    def _switch(self, index: int, embeds: np.ndarray) -> dict:
        """Recache under a new prompt (ALGORITHM.md section 9): text K/V; every bank entry's K/V from
        its own latent block alone at t = 0; one bidirectional pass at t = 0 over the last
        min(window, start) frames, whose K/V replace the window's pages."""
        cfg, be, b = self.cfg, self.backend, self.cfg.block_frames
        t0 = time.perf_counter()
        start = index * b
        be.set_prompt(embeds)
        none_local = np.full(cfg.local_slots, -1, dtype=np.int64)
        none_sink = np.full(cfg.sink_slots, -1, dtype=np.int64)
        entries = 0
        for slot in self.bank.used_slots():
            latent = self.bank.latents[slot]
            rope = rope_phases(self.dit, int(self.bank.start[slot]), b, *self.grid)
            _, k_new, v_new, _ = be.dit_step(be.upload(latent), 0.0, rope, none_local, none_sink)
            page = self.pages.alloc()               # a fresh page: the old one may also be the window's
            be.write_page(page, k_new, v_new)
            self.pages.release(int(self.bank.page[slot]))
            self.bank.page[slot] = page
            entries += 1
        t1 = time.perf_counter()
        n = min(cfg.window_frames(self.bank.size), start)
        blocks = [item for item in self.recent_latents if item[0] * b >= start - n]
        written = 0
        if n:
            n_max = cfg.window_frames(0)
            lat_c, _, lat_h, lat_w = self.latent_shape
            x = np.zeros((lat_c, n_max, lat_h, lat_w), dtype=np.float32)
            x[:, :n] = np.concatenate([lat for _, lat in blocks], axis=1)
            rope = rope_phases(self.dit, start - n, n_max, *self.grid)
            per_frame = self.grid[0] * self.grid[1]
            valid = np.arange(n_max * per_frame) < n * per_frame
            kv = be.recache_window(x, 0.0, rope, valid, len(blocks))
            history = dict(self.scheduler.history)
            for (block, _), (k_new, v_new) in zip(blocks, kv):
                page = history.get(block)
                if page is None:                  # the oldest block: context inside the pass only
                    continue
                if self.pages.refcount(page) > 1:  # still shared (not after the entry loop): split it
                    fresh = self.pages.alloc()
                    self.pages.release(page)
                    self.scheduler.replace_page(block, fresh)
                    page = fresh
                be.write_page(page, k_new, v_new)
                written += 1
        self.prompt_index += 1
        return {"prompt": self.prompt_index, "entries_recached": entries, "frames_recached": n,
                "window_pages_written": written,
                "ms": {"entries": round((t1 - t0) * 1000, 3), "window": round((time.perf_counter() - t1) * 1000, 3)}}

    # -- one block ----------------------------------------------------------
    def step(self) -> BlockRecord:
        """The next block (in the backend's thread scope: its own thread count, see Backend)."""
        with self.backend.thread_scope():
            return self._step()

    def _step(self, defer: bool = False) -> BlockRecord:
        """One block. defer (pipelined `blocks`): the streamed decode is left running
        (`Backend.decode_later`) and the record's frames are None until `_resolve`."""
        cfg, be = self.cfg, self.backend
        index = self.next_index
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        switch = None
        if self._next_prompt < len(self._prompts) and index * cfg.block_frames >= self._prompts[self._next_prompt][0]:
            switch = self._switch(index, self._prompts[self._next_prompt][1])
            self._next_prompt += 1
            clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            be.fence()
            now = time.perf_counter()
            timings[name] = round((now - clock) * 1000.0, 3)
            clock = now

        ctx = self.scheduler.context(index, self.bank.size)
        self._retrieve(ctx)
        local_ids = ctx.local_ids(cfg.local_slots)
        sink_ids = ctx.sink_ids(cfg.sink_slots)
        rope = rope_phases(self.dit, ctx.start_frame, cfg.block_frames, *self.grid)
        x_np, eps_np = self._noise(index)
        lap("retrieve")

        x = be.upload(x_np)
        ratios = []
        x0 = None
        # No host read in here (an observer asks for one per step: it runs outside the scope).
        for s, t in enumerate(self.timesteps):
            with be.denoise_scope():
                x0, _, _, r = be.dit_step(x, t, rope, local_ids, sink_ids)
            ratios.append(r)
            if self.observer is not None:
                self.observer(StepEvent(index, s, float(t), be.to_numpy(x0), be.to_numpy(r)))
            if s + 1 < len(self.timesteps):
                with be.denoise_scope():
                    x = be.renoise(x0, be.upload(eps_np[s]), self.sigmas[s + 1])
        lap("denoise")

        page = self.pages.alloc()
        clean_sinks = ctx.clean_sink_ids(cfg.sink_slots)
        with be.denoise_scope():
            clean_x0, k_new, v_new, clean_r = be.dit_step(x0, 0.0, rope, local_ids, clean_sinks)
            be.write_page(page, k_new, v_new)
        self.scheduler.commit(index, page)
        if self.observer is not None:
            self.observer(StepEvent(index, len(self.timesteps), 0.0, be.to_numpy(clean_x0), be.to_numpy(clean_r),
                                    page=page))
        lap("clean_pass")

        alone = None             # feature mode block-alone: both decodes here (a backend may overlap them)
        later = None             # deferred: the streamed decode, still running
        frames_np = None
        defer = defer and self.features is None and cfg.feature_mode != "streamed"   # as `pipelines`
        if defer and index > 0:  # block 0's streamed decode is its block-alone one: run once, below
            later = be.decode_later(x0, first=False)
            alone = be.decode_alone(x0)
        elif self.features is None and cfg.feature_mode != "streamed":
            frames, alone = be.decode_both(x0, first=(index == 0))
        else:
            frames = be.decode(x0, first=(index == 0))
        if later is None:
            frames_np = self._frames_np(frames, index)
        lap("decode")

        if self.features is not None:
            feature = self._injected_feature(index, frames_np, be.to_numpy(x0).astype(np.float32))
        else:
            feature = be.to_numpy(be.encode(frames if alone is None else alone)).astype(np.float32)
        _finite(feature, index, "the memory feature")
        lap("feature")

        latent_np = be.to_numpy(x0).astype(np.float32)
        _finite(latent_np, index, "the latent")
        duplicate, max_sim = self.bank.is_duplicate(feature, cfg.dedup_threshold)
        evicted = None
        if not duplicate:
            self.pages.retain(page)
            gone = self.bank.add(ctx.start_frame, feature, page, index, latent=latent_np)
            if gone is not None:
                evicted = gone[0]
                self.pages.release(gone[1])
        self.queue.push(feature)
        ratios_np = be.stack(ratios)                                   # [steps, layers, S_sink]
        _finite(ratios_np, index, "the gate ratios")
        self.recent_latents.append((index, latent_np))
        lap("bank")

        record = BlockRecord(
            index=index, start_frame=ctx.start_frame, window_frames=ctx.window_frames,
            bank_size=ctx.bank_size,
            retrieved=[{"start_frame": s, "score": sc} for s, sc in zip(ctx.retrieved_starts, ctx.retrieved_scores)],
            gate=self._gate_entries(ratios_np, len(ctx.fixed_pages), ctx.retrieved_starts),
            fixed_sink_gate=self._gate_entries(ratios_np, 0, ctx.fixed_starts),
            stored=not duplicate, max_similarity=max_sim, evicted_start_frame=evicted,
            timings_ms={**timings, "total": round(sum(timings.values()), 3)},
            frames=frames_np, latent=latent_np, feature=feature, prompt_switch=switch,  # type: ignore[arg-type]
            stored_reason=("first entry of an empty bank" if max_sim is None else
                           f"dedup: similarity {max_sim:.4f} > {cfg.dedup_threshold}" if duplicate else
                           f"similarity {max_sim:.4f} <= {cfg.dedup_threshold}"
                           + (f"; evicted the entry at frame {evicted}" if evicted is not None else "")),
        )
        self.next_index += 1
        if self.next_index % TRIM_EVERY == 0:
            release_free_heap()   # freed temporaries back to the OS: RSS stays flat over long streams
        if later is not None:
            self._later = (record, later)
        return record

    def _frames_np(self, frames, index: int) -> np.ndarray:
        frames_host = self.backend.to_numpy(frames)
        _finite(frames_host, index, "the decoded frames")
        return frames_to_uint8(frames_host)

    def _resolve(self, pending: tuple[BlockRecord, Any]) -> BlockRecord:
        """A deferred block's frames: waits for its streamed decode; the wait (what the pipeline did
        not hide) is the record's `decode_wait` phase."""
        record, later = pending
        t0 = time.perf_counter()
        frames = later.result()
        record.frames = self._frames_np(frames, record.index)
        wait_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        record.timings_ms = {**{k: v for k, v in record.timings_ms.items() if k != "total"},
                             "decode_wait": wait_ms, "total": round(record.timings_ms["total"] + wait_ms, 3)}
        return record

    def pipelines(self, pipeline: bool | None = None) -> bool:
        """Whether `blocks` pipelines here (see the class's `pipeline`)."""
        wanted = self.pipeline if pipeline is None else pipeline
        possible = self.features is None and self.cfg.feature_mode != "streamed"
        if wanted is None:
            return possible and self.backend.pipelines_decodes
        return bool(wanted) and possible

    def _noise(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        steps = len(self.timesteps)
        if self.noise is None:
            return block_noise(self.seed, index, self.latent_shape, steps)
        got = self.noise(index, self.latent_shape, steps)
        try:
            x, eps = got
            x = np.asarray(x, dtype=np.float32)
            eps = [np.asarray(e, dtype=np.float32) for e in eps]
        except (TypeError, ValueError):
            raise DysinkError(f"the noise source must return (x_T, eps) arrays, got {type(got).__name__}") from None
        if x.shape != self.latent_shape or len(eps) != steps - 1 or any(e.shape != self.latent_shape for e in eps):
            raise DysinkError(f"the noise source must return x_T of shape {self.latent_shape} and {steps - 1} eps "
                              f"arrays of that shape, got {x.shape} and {[e.shape for e in eps]}")
        for a in (x, *eps):
            _finite(a, index, "the injected noise")
        return x, eps

    def _injected_feature(self, index: int, frames: np.ndarray, latent: np.ndarray) -> np.ndarray:
        dim = self.backend.feature_dim
        try:
            feature = np.asarray(self.features(index, frames, latent), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DysinkError(f"the feature source must return a float array [{dim}] ({exc})") from None
        if feature.shape != (dim,):
            raise DysinkError(f"the feature source must return a feature of shape ({dim},), got {feature.shape}")
        _finite(feature, index, "the injected feature")
        norm = float(np.linalg.norm(feature.astype(np.float64)))
        if abs(norm - 1.0) > 1e-3:
            raise DysinkError(f"block {index}: the injected feature has norm {norm:.6g}; the bank compares "
                              "features by dot product as cosines: return a unit vector")
        return feature

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies (k, v) [layers, tokens, heads, head_dim] float32 of one pool page."""
        if not 0 <= page < self.cfg.pool_pages:
            raise DysinkError(f"page {page} is outside the pool (0..{self.cfg.pool_pages - 1})")
        if self.pages.refcount(page) == 0:
            held = sorted(p for p in range(self.cfg.pool_pages) if self.pages.refcount(p))
            raise DysinkError(f"page {page} is empty: no block's K/V is held there now (never written, or released "
                              f"when its block left the window and the bank); pages in use: "
                              f"{', '.join(map(str, held)) or 'none yet'}")
        return self.backend.read_page(page)

    def _gate_entries(self, ratios: np.ndarray, offset: int, starts: list[int]) -> list[dict]:
        out = []
        for j, start in enumerate(starts):
            r = ratios[:, :, offset + j]
            out.append({
                "start_frame": start,
                "ratios": np.round(r.astype(np.float64), 6).tolist(),
                "dropped": (r > self.cfg.gate_threshold).tolist(),
            })
        return out

    def blocks(self, n: int, pipeline: bool | None = None) -> Iterator[BlockRecord]:
        """The next n blocks, in order. Pipelined (`pipelines`): block N's streamed decode runs while
        block N+1 is denoised, and block N comes out once block N+1's own work is done: the same
        records, frames and decisions as `step` n times (tested bit for bit), one block later each.
        A stop inside block N+1 (Ctrl-C, an error) still hands out block N first, then raises; a
        consumer that leaves the loop early leaves one more block computed than it received."""
        if not self.pipelines(pipeline):
            for _ in range(n):
                yield self.step()
            return
        pending = None
        try:
            for _ in range(n):
                try:
                    with self.backend.thread_scope():
                        self._later = None
                        record = self._step(defer=True)
                        ahead = self._later if self._later is not None else (record, None)
                except BaseException:
                    if pending is not None:          # block N is complete: hand it out, then stop
                        done, pending = pending, None
                        yield self._resolve(done) if done[1] is not None else done[0]
                    raise
                done, pending = pending, ahead      # block N+1's decode stays awaited if N's fails
                if done is not None:
                    yield self._resolve(done) if done[1] is not None else done[0]
            if pending is not None:
                done, pending = pending, None
                yield self._resolve(done) if done[1] is not None else done[0]
        finally:
            if pending is not None and pending[1] is not None:
                wait([pending[1]])           # the streaming cache settles before anything else decodes
