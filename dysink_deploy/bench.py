"""`dysink-bench`: speed and memory numbers, printed (never asserted by timed tests).

  dysink-bench stream  --model tiny --blocks 20      blocks/s and per-phase medians
  dysink-bench memory  --blocks 300 --bank-capacity 16   peak RSS at block 100 vs the end
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import click

from .errors import DysinkError


def _torch_streamer(model_name: str, seed: int, threads: int | None, **stream_overrides):
    import torch

    from .config import model_preset
    from .models.factory import build_models
    from .runtime.backends.torch_backend import TorchBackend
    from .runtime.run import default_prompt_embeds
    from .runtime.stream import Streamer

    if threads:
        torch.set_num_threads(threads)
    model = model_preset(model_name)
    stream = model.default_stream(**stream_overrides)
    backend = TorchBackend(build_models(model, seed=0), stream)
    return Streamer(backend, model.dit, stream, default_prompt_embeds(model), seed=seed), stream


def _peak_rss_mb() -> float:
    import resource

    # ru_maxrss is in KiB on Linux: the high-water mark of the process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DysinkError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Benchmarks that print numbers."""


@main.command()
@click.option("--model", "model_name", default="tiny", show_default=True)
@click.option("--blocks", type=int, default=20, show_default=True)
@click.option("--warmup", type=int, default=2, show_default=True, help="Blocks excluded from the numbers.")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
@click.option("--feature-mode", type=click.Choice(["block-alone", "streamed"]), default="block-alone")
def stream(model_name, blocks, warmup, threads, feature_mode):
    """Blocks per second of the torch backend on this machine's CPU."""
    if blocks <= warmup:
        raise DysinkError(f"--blocks ({blocks}) must exceed --warmup ({warmup})")
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
    import torch
    click.echo(f"model {model_name} | {cfg.height}x{cfg.width} | torch {torch.__version__} CPU, "
               f"{torch.get_num_threads()} threads | feature mode {feature_mode}")
    click.echo(f"blocks/s: {n / elapsed:.2f}  ({1000 * elapsed / n:.0f} ms per block over {n} blocks, "
               f"{4 * cfg.block_frames * n / elapsed:.1f} video frames/s)")
    for k, v in phases.items():
        click.echo(f"  {k:<11} median {statistics.median(v):8.1f} ms")


@main.command()
@click.option("--model", "model_name", default="tiny", show_default=True)
@click.option("--blocks", type=int, default=300, show_default=True)
@click.option("--checkpoint-block", type=int, default=100, show_default=True)
@click.option("--bank-capacity", type=int, default=16, show_default=True)
@click.option("--dedup-threshold", type=float, default=0.99, show_default=True,
              help="Lowered from 0.95 so the tiny random model stores often and the bank fills and evicts.")
@click.option("--tolerance", type=float, default=0.05, show_default=True)
def memory(model_name, blocks, checkpoint_block, bank_capacity, dedup_threshold, tolerance):
    """Host memory stays bounded: peak RSS at --checkpoint-block vs at the end."""
    if not 0 < checkpoint_block < blocks:
        raise DysinkError("--checkpoint-block must lie between 0 and --blocks")
    streamer, cfg = _torch_streamer(model_name, 0, None, bank_capacity=bank_capacity,
                                    dedup_threshold=dedup_threshold)
    rss_mid = None
    stored = evicted = 0
    t0 = time.perf_counter()
    for rec in streamer.blocks(blocks):
        stored += rec.stored
        evicted += rec.evicted_start_frame is not None
        del rec
        if streamer.next_index == checkpoint_block:
            gc.collect()
            rss_mid = _peak_rss_mb()
            click.echo(f"block {checkpoint_block}: peak RSS {rss_mid:.1f} MB, bank {streamer.bank.size}, "
                       f"pool pages in use {streamer.pages.in_use}/{streamer.pages.num_pages}")
    gc.collect()
    rss_end = _peak_rss_mb()
    growth = (rss_end - rss_mid) / rss_mid
    click.echo(f"block {blocks}: peak RSS {rss_end:.1f} MB, bank {streamer.bank.size}, "
               f"pool pages in use {streamer.pages.in_use}/{streamer.pages.num_pages}")
    click.echo(f"stored {stored} blocks, evicted {evicted}; {time.perf_counter() - t0:.0f} s")
    verdict = "PASSED" if growth <= tolerance else "FAILED"
    click.echo(f"{verdict} | peak RSS growth from block {checkpoint_block} to {blocks}: {100 * growth:+.2f}% "
               f"(limit {100 * tolerance:.0f}%)")
    if verdict == "FAILED":
        sys.exit(1)


if __name__ == "__main__":
    main()
