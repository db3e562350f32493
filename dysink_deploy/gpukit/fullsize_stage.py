"""Stage d: full size. Wan2.1-T2V-1.3B with random weights at 480x832 in bf16, the released stream
settings, WARMUP blocks then TIMED timed blocks per configuration: video frames/s end to end, the
Streamer's per-phase times (`timings_ms`, exact here: the backend synchronizes at each phase
boundary, `phase_sync`), and the peak device memory (torch.cuda.max_memory_allocated, reset before
each configuration; the weights, resident throughout, are counted in every one).

Configurations (CONFIGS): DySink with the Triton kernels, DySink with the PyTorch references, and
no memory, LongLive's configuration: a fixed one-block sink and the same local window (2 past blocks
and the current one), no retrieval and no memory features (LONGLIVE below: top_k 0, sink_size 3,
local_attn_size 12, bank_capacity 1; StreamConfig has no setting that skips the features, so the
Streamer's `features` hook returns a constant unit vector: no block-alone decode, no memory encoder;
the bank then holds one entry that is never retrieved). Each also with its denoising steps replayed
as CUDA graphs (RunSpec.cuda_graph on the torch backend), after the three eager ones: when the
budget runs short, the configurations left are reported as not run.
The models are built once (random weights from seed 0) and shared by the configurations.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import model_preset
from ..models.factory import build_models
from ..runtime.builder import open_streamer
from ..runtime.spec import RunSpec
from .result import FAILED, PASSED, SKIPPED, StageResult

MODEL = "wan2.1-t2v-1.3b"
PRECISION = "bf16"
WARMUP, TIMED = 2, 6
LONGLIVE = {"top_k": 0, "sink_size": 3, "local_attn_size": 12, "bank_capacity": 1}
_BASE = (
    ("DySink, Triton kernels", {"kernels": "triton"}, {}, False),
    ("no memory (LongLive: window + fixed sink), Triton kernels", {"kernels": "triton"}, LONGLIVE, True),
    ("DySink, reference ops", {"kernels": "reference"}, {}, False),
)
# (name, RunSpec fields, stream settings, no memory features): eager first, then CUDA-graphed.
CONFIGS = _BASE + tuple((f"{n}, CUDA graph", {**b, "cuda_graph": True}, st, nf) for n, b, st, nf in _BASE)
TIMEOUT_ENV = "DYSINK_GPUKIT_TIMEOUT_S"      # the stage's share of the budget, set by the runner (runner.py)


def prompt_embeds(model) -> np.ndarray:
    """A fixed random [text_len, text_dim] array (random weights need no real umT5 output)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((model.dit.text_len, model.dit.text_dim), dtype=np.float32)


def constant_feature(dim: int) -> Callable:
    feature = np.zeros(dim, dtype=np.float32)
    feature[0] = 1.0
    return lambda index, frames, latent: feature


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, spec: RunSpec, models, warmup: int = WARMUP, timed: int = TIMED,
            no_features: bool = False) -> dict:
    """One configuration -> a row: frames/s, ms per block, per-phase medians, peak device memory."""
    device = spec.device
    cuda = device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    features = constant_feature(models.pe.output_dim) if no_features else None
    t_open = time.perf_counter()
    streamer, config = open_streamer(spec, models=models, features=features)
    try:
        streamer.backend.phase_sync = True
        open_s = time.perf_counter() - t_open
        phases: dict[str, list[float]] = {}
        frames, t_start = 0, time.perf_counter()
        for rec in streamer.blocks(warmup + timed):
            if rec.index == warmup - 1:
                _sync(device)
                t_start = time.perf_counter()
            if rec.index >= warmup:
                frames += int(rec.frames.shape[0])
                for k, v in rec.timings_ms.items():
                    phases.setdefault(k, []).append(v)
        _sync(device)
        elapsed = time.perf_counter() - t_start
        cfg = streamer.cfg
    finally:
        streamer.backend.close()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    row = {"configuration": name, "kernels": config.get("kernels"), "cuda graph": bool(spec.cuda_graph),
           "blocks": timed,
           "frames/s": frames / elapsed, "ms/block": 1000 * elapsed / timed,
           **{f"{k} ms": statistics.median(v) for k, v in phases.items()},
           "peak GiB": peak, "open s": open_s, "resolution": f"{cfg.width}x{cfg.height}",
           "top_k": cfg.top_k, "sink_size": cfg.sink_size, "window": cfg.local_attn_size}
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}


def spec_for(base: dict, settings: dict, device: str, model: str, prompt: np.ndarray, warmup: int,
             timed: int, precision: str = PRECISION) -> RunSpec:
    return RunSpec(model=model, device=device, precision=precision, seed=0, weights_seed=0,
                   blocks=warmup + timed, prompt_embeds=prompt, settings=settings, **base)


def run_configs(result: StageResult, device: str, model_name: str, configs=CONFIGS, warmup: int = WARMUP,
                timed: int = TIMED, log: Callable[[str], None] = print, deadline: float | None = None,
                precision: str = PRECISION) -> None:
    """Every configuration in turn, saving the result after each; one that would not finish before
    `deadline` (time.monotonic()) is recorded as not run."""
    model = model_preset(model_name)
    t0 = time.perf_counter()
    models = build_models(model, seed=0)
    result.numbers["build_models_s"] = round(time.perf_counter() - t0, 1)
    prompt = prompt_embeds(model)
    longest = 0.0
    for name, base, settings, no_features in configs:
        if deadline is not None and time.monotonic() + 1.2 * longest > deadline:
            result.rows.append({"configuration": name, "result": "NOT RUN", "detail": "would overrun the budget"})
            result.save()
            continue
        t1 = time.monotonic()
        try:
            row = measure(name, spec_for(base, settings, device, model_name, prompt, warmup, timed, precision),
                          models, warmup, timed, no_features)
            row["result"] = PASSED
        except Exception as exc:      # one configuration's failure is its row, not the stage's end
            row = {"configuration": name, "result": FAILED, "detail": f"{type(exc).__name__}: "
                                                                     f"{' '.join(str(exc).split())[:300]}"}
        longest = max(longest, time.monotonic() - t1)
        result.rows.append(row)
        result.save()
        log(f"{name}: {row.get('frames/s', '-')} frames/s, peak {row.get('peak GiB', '-')} GiB ({row['result']})")


def run(kit: Path, out: Path, log: Callable[[str], None], result: StageResult, device: str = "cuda") -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        result.finish(SKIPPED, "no CUDA GPU visible to torch")
        return
    timeout = float(os.environ.get(TIMEOUT_ENV, "0") or 0)
    deadline = time.monotonic() + timeout - 15 if timeout > 0 else None
    result.numbers.update(model=MODEL, precision=PRECISION, warmup_blocks=WARMUP, timed_blocks=TIMED,
                          longlive_settings=LONGLIVE)
    result.notes += [
        "frames/s: video frames of the timed blocks (12 each) over their wall time; phases: medians of the "
        "Streamer's timings_ms with the device synchronized at each phase boundary.",
        "no memory = LongLive's configuration: StreamConfig top_k 0, sink_size 3 (one fixed sink block), "
        "local_attn_size 12 (the same 2 past blocks + current as DySink's window), bank_capacity 1, and the "
        "Streamer's features hook returning a constant unit vector (no block-alone decode, no memory encoder).",
        "CUDA graph rows: every dit_step replayed as one graph captured at the stream's first step "
        "(torch backend, RunSpec.cuda_graph); stage c checks their decisions on the tiny model.",
    ]
    run_configs(result, device, MODEL, log=log, deadline=deadline)
    bad = [r for r in result.rows if r["result"] != PASSED]
    if bad:
        result.finish(FAILED, "; ".join(f"{r['configuration']}: {r['result']} {r.get('detail', '')}" for r in bad)[:400])
    else:
        fps = ", ".join(f"{r['configuration'].split(' (')[0]} {r['frames/s']:.2f}" for r in result.rows)
        result.finish(PASSED, f"video frames/s: {fps}")
