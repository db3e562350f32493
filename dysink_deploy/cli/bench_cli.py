"""`dysink-bench`: speed and memory numbers, printed (never asserted by timed tests).

  dysink-bench stream  --model tiny --blocks 20      blocks/s and per-phase medians
  dysink-bench memory  --blocks 300 --bank-capacity 16   RSS after malloc_trim at block 100 vs the end
  dysink-bench graphs  --model tiny [--mid]        per-graph latency, onnxruntime CPU vs torch eager
  dysink-bench kernels [--markdown FILE]           GPU check: Triton kernels vs references, vs SDPA (exit 77: skipped)
  dysink-bench soak --bundle B --blocks 2000       long onnxruntime stream twice: RSS bounded, same decisions
  dysink-bench compare RUN_A RUN_B                  two runs' decisions, block by block (exit 1 if they differ)
  dysink-bench kv-dtype [--mid]                    8-bit K/V pages vs bf16 pages: decisions, latent error, bytes
  dysink-bench export-memory --model M --precision P   peak host memory of dysink-export onnx (child process)

The measurements themselves are `dysink_deploy.bench`; these commands check the flags and print.
"""

from __future__ import annotations

import sys

import click

from .. import bench
from ..atomic import write_atomic
from ..bench_kv import format_kv_report, markdown_kv_report, measure_kv_dtypes
from ..bench_export import check_threads, export_args, measure_export
from ..config import model_preset
from ..errors import DysinkError
from ..exitcodes import SKIPPED
from ..limits import check_blocks, check_int, check_number, check_threads as check_thread_count
from ..graphs import PRECISIONS
from ..plugins import gpu_check
from ..runtime.plan import BYTES, GB, check_export, parse_memory, weight_counts
from .common import UserErrorGroup, shared, version_option


def _stderr(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=UserErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
def main():
    """Benchmarks that print numbers."""


@main.command()
@shared("--model", "model_name", default="tiny", note="torch backend.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="torch: the preset's PyTorch models; onnxruntime: --bundle's graphs on the CPU.")
@shared("--bundle", "bundle_path", type=click.Path(), default=None, note="For --backend onnxruntime.")
@shared("--blocks", type=int, default=20)
@click.option("--warmup", type=int, default=2, show_default=True, help="Blocks excluded from the numbers.")
@shared("--threads", type=int, default=None, note="Used by torch and onnxruntime.", default_text="all cores")
@shared("--feature-mode", type=click.Choice(["block-alone", "streamed"]), default=None,
        default_text="block-alone; with --bundle: the bundle's")
@shared("--pipeline/--no-pipeline", "pipeline", default=None)
def stream(model_name, backend, bundle_path, blocks, warmup, threads, feature_mode, pipeline):
    """Blocks per second of the torch or onnxruntime backend on this machine's CPU."""
    check_blocks(blocks)
    check_int(warmup, "--warmup", 0, blocks - 1, "blocks left out of the numbers; at least one block must be timed")
    check_thread_count(threads)
    if backend == "onnxruntime" and not bundle_path:
        raise DysinkError("--backend onnxruntime needs --bundle DIR (dysink-export onnx)")
    if backend != "onnxruntime" and bundle_path:
        raise DysinkError("--bundle is for --backend onnxruntime")
    rate = bench.stream_rate(backend, model_name, bundle_path, blocks, warmup, threads, feature_mode, pipeline)
    n = rate.blocks
    click.echo(rate.description)
    click.echo(f"wall clock: {rate.blocks_per_s:.2f} blocks/s ({rate.ms_per_block:.0f} ms per block over {n} blocks, "
               f"{rate.frames_per_s:.1f} video frames/s)")
    click.echo("per-phase medians (the loop's own timers; the wall clock also counts what runs between "
               "the timers, and a median ignores slow outliers):")
    for k, v in rate.phases.items():
        click.echo(f"  {k:<11} median {v:8.1f} ms")


MAX_RUNS = 10_000          # --runs of `graphs`: timed runs per graph and backend
MAX_STREAMS = 256         # a --streams count of `serve`: concurrent streams on one server


def _check_rss_flags(blocks: int, measure_block: int, tolerance: float) -> None:
    """memory / soak: --blocks bounded, --measure-block inside the run, --tolerance a finite growth."""
    check_blocks(blocks, low=2)
    if not 0 < measure_block < blocks:
        raise DysinkError(f"--measure-block must lie between 0 and --blocks ({blocks}), exclusive, got {measure_block}")
    check_number(tolerance, "--tolerance", 0.0, 10.0, "the allowed RSS growth as a fraction: 0.05 is 5%")


def stream_counts(text: str) -> list[int]:
    """--streams "1,2,4" -> [1, 2, 4]: comma-separated integers in 1..MAX_STREAMS, one line otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() for p in parts):
        raise DysinkError(f"--streams must be comma-separated stream counts such as 1,2,4, got {text[:80]!r}")
    long = [p for p in parts if len(p) > 18]       # never parsed: Python refuses 4,300 digits with a traceback
    if long:
        raise DysinkError(f"every --streams count must be an integer in 1..{MAX_STREAMS}, got a {len(long[0])}-digit "
                          "number")
    return [check_int(int(p), "every --streams count", 1, MAX_STREAMS, "concurrent streams") for p in parts]


# What `dysink-bench memory` judges (its --measure-block and --tolerance say so).
_TRIMMED = ("Here: the RSS right after malloc_trim, what the process holds (peak RSS only where malloc_trim or "
            "/proc is missing).")


def _echo_point(p: bench.RssPoint) -> None:
    click.echo(f"block {p.block}: peak RSS {p.peak_mb:.1f} MB, RSS after malloc_trim "
               + ("n/a" if p.live_mb is None else f"{p.live_mb:.1f} MB")
               + f", bank {p.bank_size}, pool pages in use {p.pages_in_use}/{p.num_pages}")


@main.command()
@shared("--model", "model_name", default="tiny")
@shared("--blocks", type=int, default=300)
@shared("--measure-block", "checkpoint_block", type=int, default=100, note=_TRIMMED)
@shared("--bank-capacity", type=int, default=16)
@shared("--dedup-threshold", type=float, default=0.99,
        note="Here above the release's 0.95 so that the random tiny model's blocks get stored, and the bank "
             "fills and evicts.")
@shared("--tolerance", type=float, default=0.05, note=_TRIMMED)
def memory(model_name, blocks, checkpoint_block, bank_capacity, dedup_threshold, tolerance):
    """Host memory stays bounded: RSS at --measure-block vs at the end.

    The verdict is on the RSS right after freed heap is handed back to the OS (glibc
    malloc_trim): what the process really holds. Peak RSS (the high-water mark, which
    also counts one block's temporaries and the heap glibc kept between trims) is printed
    beside it; where malloc_trim or /proc is missing the verdict falls back to it.
    """
    _check_rss_flags(blocks, checkpoint_block, tolerance)
    res = bench.measure_memory(model_name, blocks, checkpoint_block, bank_capacity, dedup_threshold,
                               log=_stderr, on_point=_echo_point)
    mid, end = res.points
    click.echo(f"stored {res.stored} blocks, evicted {res.evicted}; {res.seconds:.0f} s")
    peak_growth = (end.peak_mb - mid.peak_mb) / mid.peak_mb
    live = mid.live_mb is not None and end.live_mb is not None
    growth = (end.live_mb - mid.live_mb) / mid.live_mb if live else peak_growth
    what = "RSS after malloc_trim" if live else "peak RSS (malloc_trim or /proc unavailable)"
    verdict = "PASSED" if growth <= tolerance else "FAILED"
    click.echo(f"{verdict} | {what} growth from block {checkpoint_block} to {blocks}: {100 * growth:+.2f}% "
               f"(limit {100 * tolerance:.0f}%); peak RSS {100 * peak_growth:+.2f}%")
    if verdict == "FAILED":
        sys.exit(1)


@main.command()
@shared("--model", "model_name", default="tiny")
@shared("--mid", is_flag=True, note="Instead of --model.")
@shared("--graph", "graph_names", multiple=True)
@click.option("--runs", type=int, default=10, show_default=True, help="Timed runs per graph and backend.")
@shared("--threads", type=int, default=None, note="Used by torch and onnxruntime.", default_text="all cores")
@click.option("--profile", "profile_dir", type=click.Path(), default=None,
              help="Also profile onnxruntime per node into this folder and print the top op types per graph.")
def graphs(model_name, mid, graph_names, runs, threads, profile_dir):
    """Median latency per graph: onnxruntime CPU vs the torch reference, same inputs, same process."""
    check_int(runs, "--runs", 1, MAX_RUNS, "timed runs per graph and backend")
    check_thread_count(threads)

    printed = []

    def row(r: bench.GraphTiming) -> None:
        if not printed:             # the table's head, once the export is done
            click.echo(f"{'graph':<20}{'torch ms':>11}{'ort ms':>11}{'torch/ort':>11}")
        printed.append(r)
        click.echo(f"{r.graph:<20}{r.torch_ms:>11.2f}{r.ort_ms:>11.2f}{r.torch_ms / r.ort_ms:>10.2f}x")

    rows = bench.time_graphs(model_name, mid, graph_names, runs, threads, profile_dir, log=click.echo, on_row=row)
    for r in rows:
        if r.profile:
            ops = ", ".join(f"{op} {ms:.0f} ms ({100 * share:.0f}%)" for op, ms, share in bench.top_ops(r.profile))
            click.echo(f"profile {r.graph} ({r.profile}): {ops}")


@main.command()
@shared("--markdown", type=click.Path(), default=None, note="Commit it under docs/ with the date and device.")
def kernels(markdown):
    """GPU check of the Triton kernels: correctness vs the references (PASSED/FAILED per case), then
    timings against SDPA over the same keys and retrieval over 1,000 entries.

    Without a CUDA GPU it prints one SKIPPED line and exits 77 (the skip code of every GPU check of
    the project; a skip is not a pass); 1 when a case failed."""
    ok = gpu_check.run(log=click.echo, markdown=markdown)
    if ok is None:
        sys.exit(SKIPPED)
    if not ok:
        sys.exit(1)


@main.command()
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@shared("--blocks", type=int, default=2000)
@shared("--measure-block", "checkpoint_block", type=int, default=200, note="Here: peak RSS.")
@shared("--dedup-threshold", type=float, default=0.99,
        note="Here above the release's 0.95 so that the bank fills and evicts.")
@shared("--tolerance", type=float, default=0.05, note="Here: peak RSS.")
def soak(bundle_path, blocks, checkpoint_block, dedup_threshold, tolerance):
    """A long stream on onnxruntime CPU, twice: peak RSS bounded, every value finite (the stream stops
    otherwise), and the two runs' decisions identical."""
    _check_rss_flags(blocks, checkpoint_block, tolerance)
    res = bench.soak(bundle_path, blocks, checkpoint_block, dedup_threshold, log=click.echo)
    rss = res.rss
    growth = (rss[blocks] - rss[checkpoint_block]) / rss[checkpoint_block]
    click.echo(f"peak RSS: {rss[checkpoint_block]:.1f} MB at block {checkpoint_block}, {rss[blocks]:.1f} MB at "
               f"block {blocks} ({100 * growth:+.2f}%, limit {100 * tolerance:.0f}%)")
    same = res.digests[0] == res.digests[1]
    click.echo(f"decisions of the two runs: {'identical' if same else 'DIFFERENT'}; "
               f"{res.seconds:.0f} s in all")
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
    cmp = bench.compare_runs(run_a, run_b, score_digits)
    a, b, common, differ = cmp.a, cmp.b, cmp.common, cmp.differ
    settings = cmp.settings()
    if settings:        # what may explain a difference (a backend, a seed, a stream setting)
        click.echo(f"settings that differ ({len(settings)}): "
                   + "; ".join(f"{name} {va!r} vs {vb!r}" for name, va, vb in settings))
    if len(a) != len(b):
        click.echo(f"block counts differ: {len(a)} vs {len(b)} (compared the first {common})")
    if differ:
        i = differ[0]
        fields = cmp.fields(i)
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
@shared("--threads", type=int, default=1, note="Used by onnxruntime; per stream on the server and in the "
        "local run.")
def serve(bundle_path, blocks, streams, threads):
    """Triton Inference Server (CPU) vs one local process: aggregate blocks/s and per-block latency for
    1, 2, 4 concurrent streams (needs tritonserver: dysink-serve --fetch-server)."""
    check_blocks(blocks, low=2)
    counts = stream_counts(streams)
    check_thread_count(threads)
    rows = bench.measure_serve(bundle_path, blocks, counts, threads, log=_stderr)
    click.echo(f"bundle {bundle_path} | {blocks} blocks per stream | {threads} thread(s) per stream | "
               "tritonserver (CPU, Python backend) vs one local process, streams in turn")
    click.echo(f"{'streams':>8} {'server blocks/s':>16} {'median ms/block':>16} {'local blocks/s':>15} {'ratio':>7}")
    for r in rows:
        ratio = r.served / r.local
        click.echo(f"{r.streams:>8} {r.served:>16.2f} {r.median_ms:>16.0f} {r.local:>15.2f} {ratio:>6.2f}x")


@main.command("kv-dtype")
@shared("--mid", is_flag=True, note="Instead of the tiny preset.")
@shared("--blocks", type=int, default=12)
@shared("--seed", type=int, default=0)
@shared("--threads", type=int, default=None, note="Used by torch.", default_text="all cores")
@shared("--markdown", type=click.Path(), default=None)
def kv_dtype(mid, blocks, seed, threads, markdown):
    """What 8-bit K/V pages cost in fidelity: the same torch stream with bf16, fp8, int8 (and model-precision)
    pages; the decisions that differ from bf16 pages, the latent error, the page bytes."""
    check_blocks(blocks)
    check_threads(threads)
    report = measure_kv_dtypes(bench.mid_model() if mid else "tiny", blocks, seed, threads=threads,
                               log=_stderr)
    for line in format_kv_report(report):
        click.echo(line)
    if markdown:
        write_atomic(markdown, ("\n".join(markdown_kv_report(report)) + "\n").encode())
        click.echo(f"wrote {markdown}")


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


@main.command("export-memory")
@shared("--model", "model_name", default="tiny")
@shared("--precision", type=click.Choice(PRECISIONS), default="fp32")
@shared("--height", type=int, default=None, default_text="the preset's")
@shared("--width", type=int, default=None, default_text="the preset's")
@shared("--graph", "graph_names", multiple=True)
@shared("--threads", type=int, default=None, note="OMP_NUM_THREADS of the export.", default_text="inherited")
@click.option("--limit", default=None, help="Peak RSS to judge against, e.g. 8GB (PASSED/FAILED; exit 1 above it).")
def export_memory(model_name, precision, height, width, graph_names, threads, limit):
    """Peak host memory (RSS) of `dysink-export onnx` for a preset, precision and resolution: the export
    runs in a child process into a temporary folder (removed afterwards); beside it, the weights' bytes
    and the planner's estimate (runtime/plan.py)."""
    export_args(model_name, precision, height, width, graph_names)     # every flag checked before the run
    check_threads(threads)
    try:
        budget = None if limit is None else parse_memory(limit)
    except DysinkError as exc:
        raise DysinkError(str(exc).replace("--memory", "--limit")) from None
    run = measure_export(model_name, precision, height, width, graph_names, threads, log=_stderr)
    model = model_preset(model_name)
    params = sum(weight_counts(model).values())
    peak = run.peak_rss_bytes
    click.echo(f"export: {run.command} ({len(run.graphs)} graph(s): {', '.join(run.graphs)}; "
               f"OMP_NUM_THREADS={threads if threads is not None else 'inherited'})")
    click.echo(f"peak RSS: {_size(peak)} ({peak / 2 ** 30:.2f} GiB; ru_maxrss of the export process)")
    click.echo(f"wall time: {run.seconds:.1f} s (CPU {run.cpu_seconds:.1f} s)")
    click.echo(f"weights: {_size(params * BYTES[precision])} ({params:,} weights in {precision}, the planner's "
               "counts for DiT + VAE decoder + PE-Core)")
    estimate = check_export(model, precision, available=sys.maxsize)      # the bytes the planner counts
    click.echo(f"planner estimate: {_size(estimate)} (runtime/plan.py check_export: what dysink-export onnx "
               "requires free before it builds)")
    if budget is None:
        click.echo("verdict: none (no --limit given)")
        return
    ok = peak <= budget
    click.echo(f"{'PASSED' if ok else 'FAILED'} | peak RSS {_size(peak)} {'<=' if ok else '>'} limit {_size(budget)}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
