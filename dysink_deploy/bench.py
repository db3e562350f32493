"""Speed and memory measurements: stream_rate, measure_memory, time_graphs, soak, compare_runs and
measure_serve each run one and return its numbers, reporting progress to an optional `log` callable
(one line a call). `dysink-bench` (cli/bench_cli.py) checks the flags and prints the numbers; timed
tests never assert them.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .bundle import Bundle
from .config import DIT_PRESETS, PE_PRESETS, VAE_PRESETS, ModelConfig, model_preset
from .errors import DysinkError
from .graphs import graph_specs
from .jsonfile import read_json_object
from .runtime.backends.onnxruntime_backend import session_options
from .runtime.builder import open_streamer
from .runtime.heap import current_rss_mb, release_free_heap
from .runtime.report import decisions
from .runtime.spec import RunSpec
from .serving.client import StreamClient
from .serving.repo import write_repo
from .serving.server import TritonServer

Log = Callable[[str], None]


def _torch_streamer(model_name: str, seed: int, threads: int | None, **stream_overrides):
    """A torch-backend stream of the preset's random weights (fp32, CPU) -> (streamer, its name)."""
    streamer, config = open_streamer(RunSpec(model=model_name, seed=seed, threads=threads, settings=stream_overrides))
    return streamer, config["model"]


def _peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux: the high-water mark of the process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class StreamRate:
    """`blocks` timed blocks (warm-up excluded) in `seconds` of wall clock; `phases`: phase -> median
    ms (the loop's own timers); `description`: model, size, library, version, threads, feature mode."""

    description: str
    blocks: int
    seconds: float
    blocks_per_s: float
    ms_per_block: float
    frames_per_s: float         # video frames
    phases: dict


def stream_rate(backend: str = "torch", model_name: str = "tiny", bundle_path: str | None = None, blocks: int = 20,
                warmup: int = 2, threads: int | None = None, feature_mode: str | None = None,
                pipeline: bool | None = None) -> StreamRate:
    """Blocks per second of the torch backend (the preset's random weights) or onnxruntime (`bundle_path`)
    on this machine's CPU; `blocks` must exceed `warmup`. `feature_mode` None: the bundle's own
    (onnxruntime), block-alone (torch). pipeline: RunSpec.pipeline (None: where the backend gains)."""
    if backend == "onnxruntime":     # graph-baked settings must be the bundle's
        settings = {} if feature_mode is None else {"feature_mode": feature_mode}
        streamer, config = open_streamer(RunSpec(backend="onnxruntime", bundle=bundle_path, threads=threads,
                                                 settings=settings, pipeline=pipeline))
        name = f"{config['model']} ({config['bundle']}, {config['precision']})"
    else:
        streamer, name = _torch_streamer(model_name, 0, threads, feature_mode=feature_mode or "block-alone")
        streamer.pipeline = pipeline
    cfg = streamer.cfg
    feature_mode = cfg.feature_mode
    phases: dict[str, list[float]] = {}
    t_start = None
    for rec in streamer.blocks(blocks):
        if rec.index == warmup - 1 or (warmup == 0 and t_start is None):
            t_start = time.perf_counter()
            if warmup == 0:
                t_start -= rec.timings_ms["total"] / 1000.0
        if rec.index >= warmup:
            for k, v in rec.timings_ms.items():
                phases.setdefault(k, []).append(v)
    elapsed = time.perf_counter() - t_start
    n = blocks - warmup
    if backend == "torch":
        import torch    # lazy: torch

        where = f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads"
    else:
        import onnxruntime    # lazy: onnxruntime

        where = f"onnxruntime {onnxruntime.__version__} CPU, {threads or 'all'} threads"
    where += " | decode pipelined" if streamer.pipelines() else ""
    return StreamRate(f"model {name} | {cfg.height}x{cfg.width} | {where} | feature mode {feature_mode}", n, elapsed,
                      n / elapsed, 1000 * elapsed / n, 4 * cfg.block_frames * n / elapsed,
                      {k: statistics.median(v) for k, v in phases.items()})


@dataclass(frozen=True)
class RssPoint:
    """Memory at one block: peak RSS, and the RSS right after malloc_trim (None where unavailable), in MB."""

    block: int
    peak_mb: float
    live_mb: float | None
    bank_size: int
    pages_in_use: int
    num_pages: int


@dataclass(frozen=True)
class MemoryRun:
    points: list            # [RssPoint at the measure block, RssPoint at the end]
    stored: int
    evicted: int
    seconds: float


def measure_memory(model_name: str = "tiny", blocks: int = 300, checkpoint_block: int = 100, bank_capacity: int = 16,
                   dedup_threshold: float = 0.99, log: Log | None = None,
                   on_point: Callable[[RssPoint], None] | None = None) -> MemoryRun:
    """A torch stream of `blocks` blocks; RSS measured at `checkpoint_block` (0 < it < blocks) and at
    the end. `on_point` sees each RssPoint when it is measured; `log` gets progress every 50 blocks."""
    log = log or (lambda message: None)
    streamer, _ = _torch_streamer(model_name, 0, None, bank_capacity=bank_capacity, dedup_threshold=dedup_threshold)
    points = []

    def measure(block):
        gc.collect()
        peak = _peak_rss_mb()
        live = current_rss_mb() if release_free_heap() else None
        points.append(RssPoint(block, peak, live, streamer.bank.size, streamer.pages.in_use, streamer.pages.num_pages))
        if on_point is not None:
            on_point(points[-1])

    stored = evicted = 0
    t0 = time.perf_counter()
    for rec in streamer.blocks(blocks):
        stored += rec.stored
        evicted += rec.evicted_start_frame is not None
        del rec
        if streamer.next_index % 50 == 0:
            log(f"  {streamer.next_index}/{blocks} blocks, {time.perf_counter() - t0:.0f} s")
        if streamer.next_index == checkpoint_block:
            measure(checkpoint_block)
    measure(blocks)
    return MemoryRun(points, stored, evicted, time.perf_counter() - t0)


def mid_model():
    """4 DiT layers at the 1.3B width (dim 1536, 12 heads, ffn 8960) with the real VAE decoder and
    PE-Core-S16-384 configs, at 128x128: the 1.3B's per-layer costs at a size a CPU runs in seconds."""
    dit = dataclasses.replace(DIT_PRESETS["wan2.1-t2v-1.3b"], layers=4)
    return ModelConfig("mid-1.3b-width-4-layers", dit, VAE_PRESETS["wan2.1"], PE_PRESETS["pe-core-s16-384"],
                       height=128, width=128)


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up: first-run allocations, ORT's lazy kernel set-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def top_ops(profile_file: str, n: int = 8) -> list[tuple[str, float, float]]:
    """ONNX Runtime profile JSON -> [(op type, total ms, share)] of node kernel time, largest first."""
    with open(profile_file) as f:
        events = json.load(f)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0
    total = sum(per_op.values()) or 1.0
    return [(op, ms, ms / total) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:n]]


@dataclass(frozen=True)
class GraphTiming:
    graph: str
    torch_ms: float
    ort_ms: float
    profile: str | None = None      # onnxruntime's profile file, when profiled


def time_graphs(model_name: str = "tiny", mid: bool = False, graph_names=(), runs: int = 10,
                threads: int | None = None, profile_dir: str | None = None, log: Log | None = None,
                on_row: Callable[[GraphTiming], None] | None = None) -> list:
    """Median latency per graph (fp32): onnxruntime CPU vs the torch reference, same inputs, same process
    -> [GraphTiming]. `mid`: `mid_model()` instead of the preset; `runs` >= 1, `threads` >= 1 or None
    (all cores). `log` gets the setup line and the export time; `on_row` each GraphTiming when timed."""
    import onnxruntime as ort    # lazy: onnxruntime
    import torch    # lazy: torch

    from .export.onnx_export import export_onnx, graph_module, sample_inputs    # lazy: torch, onnx
    from .models.factory import build_models    # lazy: torch

    log = log or (lambda message: None)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    model = mid_model() if mid else model_preset(model_name)
    stream = model.default_stream()
    specs = graph_specs(model, stream, "fp32")
    names = list(graph_names) or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise DysinkError(f"unknown graph(s) {', '.join(unknown)}; choose from {', '.join(specs)}")
    models = build_models(model, seed=0).eval()
    log(f"model {model.name} | {stream.height}x{stream.width} fp32 | torch {torch.__version__} eager vs "
        f"onnxruntime {ort.__version__} CPUExecutionProvider | {threads} threads | median of {runs} runs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dysink-bench-") as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, precision="fp32", out=os.path.join(tmp, "bundle"), graphs=names)
        log(f"exported {len(names)} graph(s) in {time.perf_counter() - t0:.1f}s")
        bundle = Bundle.load(path, require=names)
        for name in names:
            inputs = sample_inputs(name, model, stream, "fp32", seed=0)
            module = graph_module(name, models, stream).eval()

            def run_torch():
                with torch.inference_mode():
                    module(*inputs)

            # torch first, with no ORT session alive (the project's sessions do not spin, but a
            # session from elsewhere in the process might).
            gc.collect()
            t_torch = _median_ms(run_torch, runs)
            if profile_dir:
                os.makedirs(profile_dir, exist_ok=True)
            opts = session_options(ort, threads, os.path.join(profile_dir, name) if profile_dir else None)
            sess = ort.InferenceSession(str(bundle.graph_path(name)), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            feeds = {s.name: x.numpy() for s, x in zip(specs[name].inputs, inputs)}
            t_ort = _median_ms(lambda: sess.run(None, feeds), runs)
            rows.append(GraphTiming(name, t_torch, t_ort, sess.end_profiling() if profile_dir else None))
            del sess
            if on_row is not None:
                on_row(rows[-1])
    return rows


@dataclass(frozen=True)
class SoakRun:
    digests: list           # sha256 of each run's decisions, block by block
    rss: dict               # block -> peak RSS in MB (first run): the measure block and the last
    seconds: float


def soak(bundle_path: str, blocks: int = 2000, checkpoint_block: int = 200, dedup_threshold: float = 0.99,
         log: Log | None = None) -> SoakRun:
    """A long stream on onnxruntime CPU, twice (every value finite, or the stream stops): peak RSS at
    `checkpoint_block` (0 < it < blocks) and at the end, and the digests of both runs' decisions.
    `log` gets one line per run."""
    log = log or (lambda message: None)
    spec = RunSpec(backend="onnxruntime", bundle=bundle_path, settings={"dedup_threshold": dedup_threshold})
    bundle = Bundle.load(bundle_path)
    digests, rss = [], {}
    t0 = time.perf_counter()
    for run in (1, 2):
        streamer, _ = open_streamer(spec, bundle=bundle)
        digest = hashlib.sha256()
        stored = evicted = 0
        for rec in streamer.blocks(blocks):
            stored += rec.stored
            evicted += rec.evicted_start_frame is not None
            digest.update(json.dumps(decisions({"blocks": [rec.to_json()]}), sort_keys=True).encode())
            if run == 1 and streamer.next_index in (checkpoint_block, blocks):
                gc.collect()
                rss[streamer.next_index] = _peak_rss_mb()
        digests.append(digest.hexdigest())
        log(f"run {run}: {blocks} blocks, stored {stored}, evicted {evicted}, bank {streamer.bank.size}, "
            f"pool pages in use {streamer.pages.in_use}/{streamer.pages.num_pages}")
    return SoakRun(digests, rss, time.perf_counter() - t0)


@dataclass(frozen=True)
class Comparison:
    """Two runs' decisions per block (runtime.report.decisions); `differ`: the blocks whose decisions
    differ, of the first `common` (the shorter run's count)."""

    a: list
    b: list
    common: int
    differ: list
    config_a: dict = dataclasses.field(default_factory=dict)
    config_b: dict = dataclasses.field(default_factory=dict)

    def fields(self, i: int) -> list:
        """The decision fields in which block `i` differs."""
        return sorted(k for k in self.a[i] if self.a[i].get(k) != self.b[i].get(k))

    def settings(self) -> list:
        """(name, value in a, value in b) of every run setting (stats.json's config, nested keys
        dotted: stream.top_k) that differs; the block count and the derived timesteps are left out."""
        flat_a, flat_b = _flatten(self.config_a), _flatten(self.config_b)
        names = sorted(set(flat_a) | set(flat_b))
        return [(n, flat_a.get(n), flat_b.get(n)) for n in names
                if n not in ("blocks", "timesteps") and flat_a.get(n) != flat_b.get(n)]


def _flatten(config, prefix: str = "") -> dict:
    out = {}
    for k, v in (config.items() if isinstance(config, dict) else ()):
        if isinstance(v, dict):         # an empty one is as good as none
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare_runs(run_a: str, run_b: str, score_digits: int = 4) -> Comparison:
    """The decisions of two runs (their --out directories or stats.json files); retrieval scores
    rounded to `score_digits` digits."""
    runs, configs = [], []
    for path in (run_a, run_b):
        file = os.path.join(path, "stats.json") if os.path.isdir(path) else path
        stats = read_json_object(file, "run", 1 << 30, "stats.json of dysink-run")
        if not isinstance(stats.get("blocks"), list):
            raise DysinkError(f"{file!r} has no list of blocks: not a stats.json of dysink-run")
        try:
            runs.append(decisions(stats, score_digits))
        except (KeyError, TypeError) as exc:
            raise DysinkError(f"{file!r} is not a stats.json of dysink-run (block field {exc} missing)") from None
        configs.append(stats.get("config") if isinstance(stats.get("config"), dict) else {})
    a, b = runs
    return Comparison(a, b, min(len(a), len(b)), [i for i, (x, y) in enumerate(zip(a, b)) if x != y], *configs)


@dataclass(frozen=True)
class ServeRow:
    streams: int
    served: float           # aggregate blocks/s through the server
    median_ms: float        # per-block latency at the client (block 0, the set-up, left out)
    local: float            # blocks/s of the same streams one after another in this process


def _served_rate(url: str, n: int, blocks: int) -> tuple[float, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(seed):
        c = StreamClient(url)
        last = time.perf_counter()
        for i, _ in enumerate(c.stream(seed, blocks)):
            now = time.perf_counter()
            if i:                       # block 0 includes the stream's set-up
                with lock:
                    latencies.append((now - last) * 1000)
            last = now
        c.close()

    t0 = time.perf_counter()
    workers = [threading.Thread(target=one, args=(s,)) for s in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return n * blocks / (time.perf_counter() - t0), statistics.median(latencies)


def measure_serve(bundle_path: str, blocks: int = 8, counts=(1, 2, 4), threads: int = 1,
                  log: Log | None = None) -> list:
    """Triton Inference Server (CPU) vs one local process for each concurrent stream count in `counts`
    -> [ServeRow]. Needs tritonserver (dysink-serve --fetch-server); `blocks` >= 2 per stream.
    `log` gets a line per count done."""
    log = log or (lambda message: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repo(bundle_path, f"{tmp}/repo", max_streams=max(counts), threads=threads)
        with TritonServer(str(repo), log_file=f"{tmp}/server.log") as server:
            for n in counts:
                served, latency = _served_rate(server.grpc_url, n, blocks)
                t0 = time.perf_counter()
                for s in range(n):      # the same work, one stream after another, in this process
                    streamer, _ = open_streamer(RunSpec(backend="onnxruntime", bundle=os.fspath(bundle_path),
                                                        seed=s, threads=threads))
                    try:
                        for _ in streamer.blocks(blocks):
                            pass
                    finally:
                        streamer.backend.close()
                rows.append(ServeRow(n, served, latency, n * blocks / (time.perf_counter() - t0)))
                log(f"  {n} stream(s) done")
    return rows
