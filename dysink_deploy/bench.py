"""`dysink-bench`: speed and memory numbers, printed (never asserted by timed tests).

  dysink-bench stream  --model tiny --blocks 20      blocks/s and per-phase medians
  dysink-bench memory  --blocks 300 --bank-capacity 16   peak RSS at block 100 vs the end
  dysink-bench graphs  --model tiny [--mid]        per-graph latency, onnxruntime CPU vs torch eager
  dysink-bench kernels [--markdown FILE]           GPU check: Triton kernels vs references, vs SDPA
  dysink-bench soak --bundle B --blocks 2000       long onnxruntime stream twice: RSS bounded, same decisions
  dysink-bench compare RUN_A RUN_B                  two runs' decisions, block by block (exit 1 if they differ)
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time

import click

from .bundle import Bundle
from .cli.common import UserErrorGroup, shared
from .errors import DysinkError
from .runtime.builder import open_streamer
from .runtime.report import decisions
from .runtime.spec import RunSpec


def _torch_streamer(model_name: str, seed: int, threads: int | None, **stream_overrides):
    """A torch-backend stream of the preset's random weights (fp32, CPU)."""
    streamer, config = open_streamer(RunSpec(model=model_name, seed=seed, threads=threads, settings=stream_overrides))
    streamer.dit_name = config["model"]
    return streamer, streamer.cfg


def _ort_streamer(bundle_path: str, threads: int | None, feature_mode: str, **stream_overrides):
    """An onnxruntime (CPU) stream of a bundle; graph-baked settings must be the bundle's."""
    spec = RunSpec(backend="onnxruntime", bundle=bundle_path, threads=threads,
                   settings={"feature_mode": feature_mode, **stream_overrides})
    streamer, config = open_streamer(spec)
    streamer.dit_name = f"{config['model']} ({config['bundle']}, {config['precision']})"
    return streamer, streamer.cfg


def _peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux: the high-water mark of the process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@click.group(cls=UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Benchmarks that print numbers."""


@main.command()
@shared("--model", "model_name", default="tiny", note="torch backend.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="torch: the preset's PyTorch models; onnxruntime: --bundle's graphs on the CPU.")
@shared("--bundle", "bundle_path", type=click.Path(), default=None, note="For --backend onnxruntime.")
@shared("--blocks", type=int, default=20)
@click.option("--warmup", type=int, default=2, show_default=True, help="Blocks excluded from the numbers.")
@shared("--threads", type=int, default=None, default_text="all cores")
@shared("--feature-mode", type=click.Choice(["block-alone", "streamed"]), default="block-alone")
def stream(model_name, backend, bundle_path, blocks, warmup, threads, feature_mode):
    """Blocks per second of the torch or onnxruntime backend on this machine's CPU."""
    if blocks <= warmup:
        raise DysinkError(f"--blocks ({blocks}) must exceed --warmup ({warmup})")
    if backend == "onnxruntime":
        if not bundle_path:
            raise DysinkError("--backend onnxruntime needs --bundle DIR (dysink-export onnx)")
        streamer, cfg = _ort_streamer(bundle_path, threads, feature_mode)
    else:
        if bundle_path:
            raise DysinkError("--bundle is for --backend onnxruntime")
        streamer, cfg = _torch_streamer(model_name, 0, threads, feature_mode=feature_mode)
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
        import torch
        where = f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads"
    else:
        import onnxruntime
        where = f"onnxruntime {onnxruntime.__version__} CPU, {threads or 'all'} threads"
    click.echo(f"model {streamer.dit_name} | {cfg.height}x{cfg.width} | {where} | feature mode {feature_mode}")
    click.echo(f"wall clock: {n / elapsed:.2f} blocks/s ({1000 * elapsed / n:.0f} ms per block over {n} blocks, "
               f"{4 * cfg.block_frames * n / elapsed:.1f} video frames/s)")
    click.echo("per-phase medians (the loop's own timers; the wall clock also counts what runs between "
               "the timers, and a median ignores slow outliers):")
    for k, v in phases.items():
        click.echo(f"  {k:<11} median {statistics.median(v):8.1f} ms")


@main.command()
@shared("--model", "model_name", default="tiny")
@shared("--blocks", type=int, default=300)
@shared("--measure-block", "checkpoint_block", type=int, default=100)
@shared("--bank-capacity", type=int, default=16)
@shared("--dedup-threshold", type=float, default=0.99,
        note="Here above the release's 0.95 so that the random tiny model's blocks get stored, and the bank "
             "fills and evicts.")
@shared("--tolerance", type=float, default=0.05)
def memory(model_name, blocks, checkpoint_block, bank_capacity, dedup_threshold, tolerance):
    """Host memory stays bounded: RSS at --measure-block vs at the end.

    The verdict is on the RSS right after freed heap is handed back to the OS (glibc
    malloc_trim): what the process really holds. Peak RSS (the high-water mark, which
    also counts one block's temporaries and the heap glibc kept between trims) is printed
    beside it; where malloc_trim or /proc is missing the verdict falls back to it.
    """
    if not 0 < checkpoint_block < blocks:
        raise DysinkError("--measure-block must lie between 0 and --blocks")
    streamer, cfg = _torch_streamer(model_name, 0, None, bank_capacity=bank_capacity,
                                    dedup_threshold=dedup_threshold)
    mid = None
    stored = evicted = 0
    t0 = time.perf_counter()
    for rec in streamer.blocks(blocks):
        stored += rec.stored
        evicted += rec.evicted_start_frame is not None
        del rec
        if streamer.next_index % 50 == 0:
            click.echo(f"  {streamer.next_index}/{blocks} blocks, {time.perf_counter() - t0:.0f} s", err=True)
        if streamer.next_index == checkpoint_block:
            mid = _rss_now(streamer, checkpoint_block)
    end = _rss_now(streamer, blocks)
    click.echo(f"stored {stored} blocks, evicted {evicted}; {time.perf_counter() - t0:.0f} s")
    peak_growth = (end[0] - mid[0]) / mid[0]
    live = mid[1] is not None and end[1] is not None
    growth = (end[1] - mid[1]) / mid[1] if live else peak_growth
    what = "RSS after malloc_trim" if live else "peak RSS (malloc_trim or /proc unavailable)"
    verdict = "PASSED" if growth <= tolerance else "FAILED"
    click.echo(f"{verdict} | {what} growth from block {checkpoint_block} to {blocks}: {100 * growth:+.2f}% "
               f"(limit {100 * tolerance:.0f}%); peak RSS {100 * peak_growth:+.2f}%")
    if verdict == "FAILED":
        sys.exit(1)


def _rss_now(streamer, block: int) -> tuple[float, float | None]:
    """(peak RSS, RSS after handing freed heap back to the OS) in MB, printed for `block`."""
    from .runtime.heap import current_rss_mb, release_free_heap

    gc.collect()
    peak = _peak_rss_mb()
    live = current_rss_mb() if release_free_heap() else None
    click.echo(f"block {block}: peak RSS {peak:.1f} MB, RSS after malloc_trim "
               + ("n/a" if live is None else f"{live:.1f} MB")
               + f", bank {streamer.bank.size}, pool pages in use {streamer.pages.in_use}/{streamer.pages.num_pages}")
    return peak, live


def mid_model():
    """4 DiT layers at the 1.3B width (dim 1536, 12 heads, ffn 8960) with the real VAE decoder and
    PE-Core-S16-384 configs, at 128x128: the 1.3B's per-layer costs at a size a CPU runs in seconds."""
    from .config import DIT_PRESETS, PE_PRESETS, VAE_PRESETS, ModelConfig

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


def _top_ops(profile_file: str, n: int = 8) -> list[tuple[str, float, float]]:
    """ONNX Runtime profile JSON -> [(op type, total ms, share)] of node kernel time, largest first."""
    import json

    with open(profile_file) as f:
        events = json.load(f)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0
    total = sum(per_op.values()) or 1.0
    return [(op, ms, ms / total) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:n]]


@main.command()
@shared("--model", "model_name", default="tiny")
@click.option("--mid", is_flag=True, help="Instead of --model: 4 DiT layers at the 1.3B width, real VAE and "
                                          "PE-Core configs, 128x128 (random weights).")
@shared("--graph", "graph_names", multiple=True)
@click.option("--runs", type=int, default=10, show_default=True, help="Timed runs per graph and backend.")
@shared("--threads", type=int, default=None, default_text="all cores")
@click.option("--profile", "profile_dir", type=click.Path(), default=None,
              help="Also profile onnxruntime per node into this folder and print the top op types per graph.")
def graphs(model_name, mid, graph_names, runs, threads, profile_dir):
    """Median latency per graph: onnxruntime CPU vs the torch reference, same inputs, same process."""
    import os
    import tempfile

    import onnxruntime as ort
    import torch

    from .bundle import Bundle
    from .config import model_preset
    from .export.onnx_export import export_onnx, graph_module, sample_inputs
    from .graphs import graph_specs
    from .models.factory import build_models

    if runs < 1:
        raise DysinkError(f"--runs must be >= 1, got {runs}")
    if threads is not None and threads < 1:
        raise DysinkError(f"--threads must be >= 1, got {threads}")
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
    click.echo(f"model {model.name} | {stream.height}x{stream.width} fp32 | torch {torch.__version__} eager vs "
               f"onnxruntime {ort.__version__} CPUExecutionProvider | {threads} threads | median of {runs} runs")
    with tempfile.TemporaryDirectory(prefix="dysink-bench-") as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, precision="fp32", out=os.path.join(tmp, "bundle"), graphs=names)
        click.echo(f"exported {len(names)} graph(s) in {time.perf_counter() - t0:.1f}s")
        bundle = Bundle.load(path, require=names)
        click.echo(f"{'graph':<20}{'torch ms':>11}{'ort ms':>11}{'torch/ort':>11}")
        profiles = {}
        for name in names:
            inputs = sample_inputs(name, model, stream, "fp32", seed=0)
            module = graph_module(name, models, stream).eval()

            def run_torch():
                with torch.inference_mode():
                    module(*inputs)

            # torch first, with no ORT session alive: ORT's pool threads spin after a run and would
            # steal the cores torch's OpenMP threads wait on (seen as 10-100x slower torch on 2 cores).
            gc.collect()
            t_torch = _median_ms(run_torch, runs)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            if profile_dir:
                os.makedirs(profile_dir, exist_ok=True)
                opts.enable_profiling = True
                opts.profile_file_prefix = os.path.join(profile_dir, name)
            sess = ort.InferenceSession(str(bundle.graph_path(name)), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            feeds = {s.name: x.numpy() for s, x in zip(specs[name].inputs, inputs)}
            t_ort = _median_ms(lambda: sess.run(None, feeds), runs)
            click.echo(f"{name:<20}{t_torch:>11.2f}{t_ort:>11.2f}{t_torch / t_ort:>10.2f}x")
            if profile_dir:
                profiles[name] = sess.end_profiling()
            del sess
        for name, file in profiles.items():
            ops = ", ".join(f"{op} {ms:.0f} ms ({100 * share:.0f}%)" for op, ms, share in _top_ops(file))
            click.echo(f"profile {name} ({file}): {ops}")


@main.command()
@shared("--markdown", type=click.Path(), default=None, note="Commit it under docs/ with the date and device.")
def kernels(markdown):
    """GPU check of the Triton kernels: correctness vs the references (PASSED/FAILED per case), then
    timings against SDPA over the same keys and retrieval over 1,000 entries. Skips without a GPU."""
    from .plugins.gpu_check import run

    if not run(log=click.echo, markdown=markdown):
        sys.exit(1)



@main.command()
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@shared("--blocks", type=int, default=2000)
@shared("--measure-block", "checkpoint_block", type=int, default=200)
@shared("--dedup-threshold", type=float, default=0.99,
        note="Here above the release's 0.95 so that the bank fills and evicts.")
@shared("--tolerance", type=float, default=0.05)
def soak(bundle_path, blocks, checkpoint_block, dedup_threshold, tolerance):
    """A long stream on onnxruntime CPU, twice: peak RSS bounded, every value finite (the stream stops
    otherwise), and the two runs' decisions identical."""
    import hashlib
    import json

    if not 0 < checkpoint_block < blocks:
        raise DysinkError("--measure-block must lie between 0 and --blocks")
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
        click.echo(f"run {run}: {blocks} blocks, stored {stored}, evicted {evicted}, bank {streamer.bank.size}, "
                   f"pool pages in use {streamer.pages.in_use}/{streamer.pages.num_pages}")
    growth = (rss[blocks] - rss[checkpoint_block]) / rss[checkpoint_block]
    same = digests[0] == digests[1]
    click.echo(f"peak RSS: {rss[checkpoint_block]:.1f} MB at block {checkpoint_block}, {rss[blocks]:.1f} MB at "
               f"block {blocks} ({100 * growth:+.2f}%, limit {100 * tolerance:.0f}%)")
    click.echo(f"decisions of the two runs: {'identical' if same else 'DIFFERENT'}; "
               f"{time.perf_counter() - t0:.0f} s in all")
    ok = same and growth <= tolerance
    click.echo(f"{'PASSED' if ok else 'FAILED'} | soak of {blocks} blocks x 2 on onnxruntime CPU")
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("run_a", type=click.Path())
@click.argument("run_b", type=click.Path())
@click.option("--score-digits", type=click.IntRange(0, 8), default=4, show_default=True,
              help="Retrieval scores are compared rounded to this many digits.")
def compare(run_a, run_b, score_digits):
    """Compare the decisions of two runs (their --out directories or stats.json files), block by block:
    windows, retrievals, gate drops, bank stores and evictions; exit 1 when they differ."""
    import os

    from .jsonfile import read_json_object
    from .runtime.report import decisions

    runs = []
    for path in (run_a, run_b):
        file = os.path.join(path, "stats.json") if os.path.isdir(path) else path
        stats = read_json_object(file, "run", 1 << 30, "stats.json of dysink-run")
        if not isinstance(stats.get("blocks"), list):
            raise DysinkError(f"{file!r} has no list of blocks: not a stats.json of dysink-run")
        try:
            runs.append(decisions(stats, score_digits))
        except (KeyError, TypeError) as exc:
            raise DysinkError(f"{file!r} is not a stats.json of dysink-run (block field {exc} missing)") from None
    a, b = runs
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    common = min(len(a), len(b))
    if len(a) != len(b):
        click.echo(f"block counts differ: {len(a)} vs {len(b)} (compared the first {common})")
    if differ:
        i = differ[0]
        fields = sorted(k for k in a[i] if a[i].get(k) != b[i].get(k))
        click.echo(f"DIFFERENT | {len(differ)} of {common} blocks; first: block {i} ({', '.join(fields)})")
        for k in fields:
            click.echo(f"  {k}: {a[i].get(k)!r} vs {b[i].get(k)!r}")
        sys.exit(1)
    if len(a) != len(b):
        sys.exit(1)
    click.echo(f"SAME | {common} blocks, identical decisions")


@main.command()
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@shared("--blocks", type=int, default=8, note="Per stream.")
@click.option("--streams", default="1,2,4", show_default=True, help="Concurrent stream counts to measure.")
@shared("--threads", type=int, default=1, note="Per stream on the server and in the local run.")
def serve(bundle_path, blocks, streams, threads):
    """Triton Inference Server (CPU) vs one local process: aggregate blocks/s and per-block latency for
    1, 2, 4 concurrent streams (needs tritonserver: dysink-serve --fetch-server)."""
    import statistics
    import tempfile
    import threading

    from . import api
    from .serving.client import StreamClient
    from .serving.repo import write_repo
    from .serving.server import TritonServer

    counts = [int(c) for c in streams.split(",")]
    if blocks < 2 or min(counts) < 1:
        raise DysinkError("--blocks must be >= 2 and every --streams count >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repo(bundle_path, f"{tmp}/repo", max_streams=max(counts), threads=threads)
        with TritonServer(str(repo), log_file=f"{tmp}/server.log") as server:
            for n in counts:
                latencies: list[float] = []
                lock = threading.Lock()

                def one(seed):
                    c = StreamClient(server.grpc_url)
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
                served = n * blocks / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                for s in range(n):                  # the same work, one stream after another, in this process
                    with api.open_stream(bundle_path, seed=s, threads=threads) as stream:
                        for _ in stream.blocks(blocks):
                            pass
                local = n * blocks / (time.perf_counter() - t0)
                rows.append((n, served, statistics.median(latencies), local))
                click.echo(f"  {n} stream(s) done", err=True)
    click.echo(f"bundle {bundle_path} | {blocks} blocks per stream | {threads} thread(s) per stream | "
               "tritonserver (CPU, Python backend) vs one local process, streams in turn")
    click.echo(f"{'streams':>8} {'server blocks/s':>16} {'median ms/block':>16} {'local blocks/s':>15} {'ratio':>7}")
    for n, served, lat, local in rows:
        click.echo(f"{n:>8} {served:>16.2f} {lat:>16.0f} {local:>15.2f} {served / local:>6.2f}x")


if __name__ == "__main__":
    main()
