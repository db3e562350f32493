"""What 8-bit K/V pages cost in fidelity (`dysink-bench kv-dtype`), measured.

The same stream (same weights, prompt, noise and settings) runs on the torch backend once per page
type; every run is compared with the bf16-page run, the storage of the released bf16 model: which
decisions differ (retrieved sinks, gate drops, dedup skips) and how far the latents move (max and
RMS of the difference, relative to the bf16 run's RMS latent). The model runs in float32 on the CPU
(the page type is the only thing that changes between runs); `auto` (float32 pages) is shown too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, model_preset
from .errors import DysinkError
from .graphs import KV_CACHE_DTYPES
from .runtime.builder import open_streamer
from .runtime.plan import page_bytes
from .runtime.report import decisions
from .runtime.spec import RunSpec

BASELINE = "bf16"


@dataclass
class KvRow:
    kv_cache_dtype: str
    page_bytes: int                 # one page (every layer's K and V, plus scales for 8-bit pages)
    retrieval_blocks: int           # blocks whose retrieved sinks differ from the baseline's
    gate_blocks: int                # blocks whose gate drops differ
    dedup_blocks: int               # blocks stored in the bank here and not there, or the reverse
    latent_max: float               # max |latent - baseline latent| over every block
    latent_rel_rms: float           # RMS of that difference / RMS of the baseline latents


@dataclass
class KvReport:
    model: str
    blocks: int
    description: str
    rows: list[KvRow]


def _run(model: ModelConfig, kind: str, blocks: int, seed: int, settings: dict, threads: int | None):
    spec = RunSpec(model_config=model.to_dict(), kv_cache_dtype=kind, seed=seed, settings=settings,
                   threads=threads)
    streamer, _ = open_streamer(spec)
    try:
        recs = list(streamer.blocks(blocks))
    finally:
        streamer.backend.close()
    return decisions({"blocks": [r.to_json() for r in recs]}), [r.latent for r in recs]


def _differ(a: list[dict], b: list[dict], key: str) -> int:
    return sum(x[key] != y[key] for x, y in zip(a, b))


def measure_kv_dtypes(model: ModelConfig | str = "tiny", blocks: int = 12, seed: int = 0,
                      kinds=("auto", "bf16", "fp8", "int8"), threads: int | None = None,
                      settings: dict | None = None, log=lambda msg: None) -> KvReport:
    """The stream once per page type in `kinds` (bf16 always included: the baseline) -> KvReport."""
    model = model_preset(model) if isinstance(model, str) else model
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= 10_000:
        raise DysinkError(f"--blocks must be an integer in 1..10000, got {blocks!r}")
    bad = [k for k in kinds if k not in KV_CACHE_DTYPES]
    if bad:
        raise DysinkError(f"--kv-cache-dtype {', '.join(map(str, bad))}: not one of {', '.join(KV_CACHE_DTYPES)}")
    kinds = [BASELINE] + [k for k in dict.fromkeys(kinds) if k != BASELINE]
    # dedup 0.985 (as in `make demo`): random weights give alike features, and the bank must fill
    # for retrieval and the gate to act within a short run.
    settings = {"dedup_threshold": 0.985, **(settings or {})}
    runs = {}
    for kind in kinds:
        log(f"streaming {blocks} blocks with {kind} pages")
        runs[kind] = _run(model, kind, blocks, seed, settings, threads)
    stream = model.default_stream(**settings)
    base_dec, base_lat = runs[BASELINE]
    base = np.concatenate([x.ravel() for x in base_lat]).astype(np.float64)
    base_rms = math.sqrt(float(np.mean(base ** 2))) or 1.0
    rows = []
    for kind in kinds:
        dec, lat = runs[kind]
        diff = np.concatenate([x.ravel() for x in lat]).astype(np.float64) - base
        rows.append(KvRow(kind, page_bytes(model, stream, "fp32", kind),
                          _differ(dec, base_dec, "retrieved"), _differ(dec, base_dec, "gate"),
                          _differ(dec, base_dec, "stored"), float(np.abs(diff).max()),
                          math.sqrt(float(np.mean(diff ** 2))) / base_rms))
    retrieved = sum(bool(d["retrieved"]) for d in base_dec)
    dropped = sum(any(g["dropped"] for g in d["gate"]) for d in base_dec)
    skipped = sum(not d["stored"] for d in base_dec)
    desc = (f"{model.name} | {stream.width}x{stream.height} | torch CPU, model float32, seed {seed}, "
            f"dedup {settings['dedup_threshold']} | baseline bf16 pages: {retrieved} blocks retrieving, "
            f"{dropped} with a gate drop, {skipped} not stored (of {blocks})")
    return KvReport(model.name, blocks, desc, rows)


def format_kv_report(report: KvReport) -> list[str]:
    lines = [report.description,
             f"{'pages':6s} {'page MB':>9s} {'retrieval':>10s} {'gate':>6s} {'dedup':>6s} "
             f"{'latent max':>11s} {'latent rel RMS':>15s}   (decision columns: blocks that differ from bf16)"]
    for r in report.rows:
        lines.append(f"{r.kv_cache_dtype:6s} {r.page_bytes / 1e6:9.3f} {r.retrieval_blocks:10d} {r.gate_blocks:6d} "
                     f"{r.dedup_blocks:6d} {r.latent_max:11.2e} {r.latent_rel_rms:15.2e}")
    return lines


def markdown_kv_report(report: KvReport) -> list[str]:
    out = [f"{report.description}", "",
           "| pages | page MB | retrieval differs | gate differs | dedup differs | latent max diff | latent rel. RMS |",
           "|---|---|---|---|---|---|---|"]
    for r in report.rows:
        out.append(f"| {r.kv_cache_dtype} | {r.page_bytes / 1e6:.3f} | {r.retrieval_blocks} / {report.blocks} | "
                   f"{r.gate_blocks} / {report.blocks} | {r.dedup_blocks} / {report.blocks} | {r.latent_max:.2e} | "
                   f"{r.latent_rel_rms:.2e} |")
    return out


__all__ = ["KvReport", "KvRow", "format_kv_report", "markdown_kv_report", "measure_kv_dtypes"]
