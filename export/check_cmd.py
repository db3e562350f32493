"""`dysink-export check`: the flags of the check (export/check.py) and its report lines."""

from __future__ import annotations

import shlex
import sys
import time

import click

from ..bundle import Bundle
from ..cli.common import shared
from ..errors import DysinkError
from ..limits import check_blocks
from ..runtime.backends.tensorrt_backend import TensorRTBackend
from ..runtime.spec import RunSpec, spec_choices, spec_default
from .check import FLOOR, _coverage, check_graphs, compare_streams, mark_for, reference_models
from .trt_lint import lint_bundle_report


@click.command("check")
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@click.option("--input-seed", "seed", type=int, default=0, show_default=True, help="Seed of the random graph inputs.")
@shared("--blocks", type=int, default=6, note="Here: the torch vs onnxruntime stream comparison (0: skip it).")
@shared("--dedup-threshold", type=float, default=0.985,
        note="Here above the release's 0.95: the random tiny model's blocks all look alike, and the bank must "
             "grow for blocks to retrieve.")
@shared("--ort-provider", type=click.Choice(spec_choices("ort_provider")), default=spec_default("ort_provider"))
@shared("--threads", type=int, default=None, note="Used by onnxruntime and the PyTorch reference.",
        default_text="all cores")
@click.option("--engines", is_flag=True,
              help="Check the bundle's TensorRT engines (dysink-export build) instead of its ONNX graphs.")
@click.option("--verbose", is_flag=True,
              help="One line per graph output (without it: one line per graph, and every output out of tolerance "
                   "in full).")
@click.option("--trt", "trt_versions", multiple=True, type=click.Choice(["10.3", "10.13", "11"]),
              help="Instead: lint every node against this TensorRT version's ONNX parser (operator matrix, dtypes, "
                   "opset, IR version, plugin attributes, 2^31 elements); repeatable; CPU only, no TensorRT needed.")
def check_command(bundle_path, seed, blocks, dedup_threshold, ort_provider, threads, engines, verbose, trt_versions):
    """Compare every graph output of a bundle, then a short stream, with the PyTorch reference
    (or, with --trt, lint the bundle against TensorRT parsers)."""
    t0 = time.perf_counter()
    if trt_versions:
        _lint_command(bundle_path, trt_versions, t0)
        return
    check_blocks(blocks, low=0)
    RunSpec(threads=threads)                # the one check of --threads
    try:
        import torch  # noqa: F401  # lazy: torch (the reference this command compares with)
    except ImportError:
        raise DysinkError("check compares the bundle with the PyTorch reference, which needs torch: pip install "
                          "'dysink-deploy[torch]' (without torch: check --trt lints the bundle, dysink-run streams "
                          "it)") from None
    bundle = Bundle.load(bundle_path)
    if threads:
        torch.set_num_threads(threads)      # the PyTorch reference too, not only ONNX Runtime
    trt_backend = None
    if engines:
        trt_backend = TensorRTBackend(bundle)
        ort_provider = "tensorrt engines"
    models = reference_models(bundle)
    note = " (fp32 twin: bf16 rounding, fp32 arithmetic)" if bundle.precision == "bf16" and not engines else ""
    low = "fp16" if bundle.precision == "fp32" else bundle.precision
    click.echo(f"bundle {bundle.path}: {bundle.model.name}, {bundle.precision}; onnxruntime {ort_provider}{note} "
               f"vs PyTorch fp32; tol = 2 x PyTorch {low} error + {FLOOR:g} x max(1, |ref|)")
    try:
        checks = check_graphs(bundle, models, seed=seed, provider=ort_provider, log=click.echo, threads=threads,
                              runner=trt_backend.run_graph if trt_backend else None, verbose=verbose)
    finally:
        if trt_backend is not None:       # the stream below opens the engines again, in its own backend
            trt_backend.close()
    failed = [c for c in checks if not c.ok]
    stream_failed = False
    if blocks == 0:
        click.echo("stream comparison skipped (--blocks 0)")
    elif bundle.precision == "bf16" and ort_provider == "cpu" and not engines:
        click.echo("stream comparison skipped: the onnxruntime backend cannot run bf16 graphs on CPU")
    elif failed:
        click.echo("stream comparison skipped: graph outputs already differ")
    else:
        dec_torch, dec_ort, diffs = compare_streams(bundle, models, blocks, dedup_threshold,
                                                    "cpu" if engines else ort_provider, seed,
                                                    other="tensorrt" if engines else "onnxruntime", threads=threads)
        strict = bundle.precision == "fp32"
        for d in diffs:
            click.echo(f"- [{'x' if strict else '!'}] {d}")
        if diffs and not strict:
            click.echo(f"  ({bundle.precision}: torch and onnxruntime round differently; a near-tie may flip)")
        stream_failed = strict and bool(diffs)
        mark = mark_for(not stream_failed)
        click.echo(f"- [{mark}] stream of {blocks} blocks: {len(diffs)} blocks with different decisions "
                   f"(torch: {_coverage(dec_torch)})")
    runtime = time.perf_counter() - t0
    command = shlex.join(["dysink-export", *sys.argv[1:]])
    if failed or stream_failed:
        what = f"{len(failed)}/{len(checks)} outputs out of tolerance" if failed else "stream decisions differ"
        click.echo(f"FAILED | {what} | Runtime: {runtime:.1f}s | Command: {command}")
        sys.exit(1)
    click.echo(f"PASSED | {len(checks)} outputs | Runtime: {runtime:.1f}s | Command: {command}")


def _lint_command(bundle_path, trt_versions, t0) -> None:
    bundle = Bundle.load(bundle_path)
    failed = 0
    for version in trt_versions:
        problems, notes = lint_bundle_report(bundle, version)
        for note in notes:
            click.echo(f"- [i] TensorRT {version}: {note}")
        for p in problems:
            click.echo(f"- [x] TensorRT {version}: {p}")
        mark = mark_for(not problems)
        click.echo(f"- [{mark}] TensorRT {version}: {len(bundle.graphs)} graphs, {len(problems)} problems")
        failed += bool(problems)
    command = shlex.join(["dysink-export", *sys.argv[1:]])
    verdict = "FAILED" if failed else "PASSED"
    click.echo(f"{verdict} | {len(trt_versions)} TensorRT version(s) | Runtime: {time.perf_counter() - t0:.1f}s | "
               f"Command: {command}")
    if failed:
        sys.exit(1)
