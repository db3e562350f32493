"""`dysink-export check`: a bundle's ONNX graphs against the PyTorch reference, per output, then a stream.

1. Every graph: seeded contract inputs (`onnx_export.sample_inputs`: valid page
   ids or -1, bool masks, real RoPE phases) in the bundle's precision. The
   reference is the graph's module in float32, fed the same values upcast.
   Tolerance, measured (STYLE.md, flash-attention rule): 2 x the max abs error
   of the same module run by PyTorch in a low precision against that reference,
   plus a floor of 1e-5 x max(1, max |reference|) for fp32 rounding.
   The low precision is the bundle's (fp16 / bf16); for an fp32 bundle it is
   fp16: a scale for "as close as a reduced-precision PyTorch run", loose for
   fp32 rounding noise but far below what wrong weights or ops give.
   Integer outputs (retrieved slots) must match exactly. Every output of every
   graph is checked before the verdict.
2. A short stream (default 6 blocks, dedup 0.985 so the bank grows and blocks 4+
   retrieve) on the torch and onnxruntime backends; `report.decisions` must be
   equal (a difference fails fp32 bundles; at fp16 / bf16 a near-tie may flip,
   so it is reported as a warning).

bf16 bundles: ONNX Runtime CPU has no bf16 kernels, so graphs are checked
through `onnx_export.fp32_twin` (bf16 rounding where the graph casts, fp32
arithmetic) and the stream step is skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import shlex
import sys
import time

import click

from ..cli.common import shared
import numpy as np

from ..bundle import Bundle
from ..errors import DysinkError

FLOOR = 1e-5


def mark_for(ok: bool) -> str:
    """✓ / x, with 'v' where the terminal's encoding has no ✓ (a C-locale pipe)."""
    if not ok:
        return "x"
    try:
        "✓".encode(sys.stdout.encoding or "ascii")
        return "✓"
    except (UnicodeEncodeError, LookupError):
        return "v"


@dataclasses.dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float
    max_rel: float
    tol: float
    exact: bool = False

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.tol

    def line(self) -> str:
        mark = mark_for(self.ok)
        if self.exact:
            return f"- [{mark}] {self.graph}/{self.output} {int(self.max_abs)} mismatching elements (tol 0)"
        sign = "<=" if self.ok else ">"
        return (f"- [{mark}] {self.graph}/{self.output} max abs error {self.max_abs:.2e} {sign} tol {self.tol:.2e} "
                f"(max rel error {self.max_rel:.1e}, informative only)")


def reference_models(bundle: Bundle):
    """The float32 PyTorch models the bundle was exported from (checkpoints recorded in the manifest,
    random weights from the recorded seed otherwise)."""
    import os

    from ..models.factory import CheckpointPaths, build_models

    rec = bundle.manifest.get("checkpoints") or {}
    paths = CheckpointPaths(dit=rec.get("dit"), lora=rec.get("lora"), vae=rec.get("vae"), pe=rec.get("pe"),
                            use_ema=bool(rec.get("use_ema", False)))
    for name in ("dit", "lora", "vae", "pe"):
        p = getattr(paths, name)
        if p and not os.path.isfile(p):
            raise DysinkError(f"bundle {bundle.path} was exported from {name} checkpoint {p}, which is not there; "
                              "the reference needs the same files (restore them at that path)")
    return build_models(bundle.model, paths if paths.any() else None, seed=int(rec.get("random_seed", 0))).float()


def _session(bundle: Bundle, name: str, provider: str):
    import onnx
    import onnxruntime as ort

    from ..runtime.backends.onnxruntime_backend import load_session, resolve_providers
    from .onnx_export import fp32_twin

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    path = str(bundle.graph_path(name))
    providers = list(resolve_providers(provider))
    if bundle.precision == "bf16" and providers[0] == "CPUExecutionProvider":
        model = fp32_twin(onnx.load(path))
        return load_session(ort, bundle, name, model.SerializeToString(), opts, providers)
    return load_session(ort, bundle, name, path, opts, providers)


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref.astype(np.float64)), 1e-6)
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def check_graphs(bundle: Bundle, models=None, seed: int = 0, provider: str = "cpu",
                 log=lambda line: None, runner=None) -> list[OutputCheck]:
    """Every output of every graph of `bundle` vs the float32 PyTorch reference (see module docstring).
    `runner(name, feeds) -> outputs` replaces ONNX Runtime (the engines: TensorRTBackend.run_graph)."""
    import torch

    from ..graphs import graph_specs
    from .onnx_export import TORCH_DTYPES, graph_module, sample_inputs

    models = models if models is not None else reference_models(bundle)
    low = "fp16" if bundle.precision == "fp32" else bundle.precision
    low_models = copy.deepcopy(models).to(TORCH_DTYPES[low])
    low_specs = graph_specs(bundle.model, bundle.stream, low, bundle.encoder_frames, bundle.interactive,
                            bundle.text_encoder is not None)   # which inputs the low-precision run casts
    checks: list[OutputCheck] = []
    for name, spec in bundle.specs.items():
        inputs = sample_inputs(name, bundle.model, bundle.stream, bundle.precision, seed=seed)
        ref_in = [x.float() if x.is_floating_point() else x for x in inputs]
        low_in = [x.to(TORCH_DTYPES[low]) if x.is_floating_point() and s.dtype != "float32" else x
                  for x, s in zip(ref_in, low_specs[name].inputs)]
        with torch.inference_mode():
            if name == "umt5_encoder":          # float32 in the reference; its baseline is an fp16 copy
                from .onnx_export import text_encoder_graph

                ref_mod = text_encoder_graph(bundle.text_encoder)
                ref = (ref_mod(*ref_in),)
                base = (copy.deepcopy(ref_mod).half()(*low_in),)
            else:
                ref = graph_module(name, models, bundle.stream).eval()(*ref_in)
                base = graph_module(name, low_models, bundle.stream).eval()(*low_in)
        feeds = {s.name: (x.float() if x.dtype == torch.bfloat16 else x).numpy() for s, x in zip(spec.inputs, inputs)}
        got = runner(name, feeds) if runner else _session(bundle, name, provider).run(
            [s.name for s in spec.outputs], feeds)
        for s, r, b, g in zip(spec.outputs, ref, base, got):
            r_np = r.float().numpy() if r.is_floating_point() else r.numpy()
            if not r.is_floating_point():
                mism = float(np.count_nonzero(g != r_np))
                check = OutputCheck(name, s.name, mism, 0.0, 0.0, exact=True)
            else:
                base_err = float((b.float() - r.float()).abs().max()) if r.numel() else 0.0
                tol = 2.0 * base_err + FLOOR * max(1.0, float(np.abs(r_np).max(initial=0.0)))
                check = OutputCheck(name, s.name, *_errors(np.asarray(g, dtype=np.float32), r_np), tol)
            checks.append(check)
            log(check.line())
    return checks


def compare_streams(bundle: Bundle, models=None, blocks: int = 6, dedup_threshold: float = 0.985,
                    provider: str = "cpu", seed: int = 0, other=None) -> tuple[list[dict], list[dict], list[str]]:
    """Stream `blocks` blocks on torch and onnxruntime (or `other`, a backend) -> (torch decisions,
    other decisions, differences)."""
    from ..runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ..runtime.backends.torch_backend import TorchBackend
    from ..runtime.report import decisions
    from ..runtime.run import default_prompt_embeds
    from ..runtime.stream import Streamer
    from .onnx_export import TORCH_DTYPES

    models = models if models is not None else reference_models(bundle)
    stream = dataclasses.replace(bundle.stream, dedup_threshold=dedup_threshold)
    prompt = default_prompt_embeds(bundle.model)
    dtype = TORCH_DTYPES[bundle.precision]
    runs = []
    for backend in (TorchBackend(copy.deepcopy(models), stream, dtype=dtype),
                    other or OnnxRuntimeBackend(bundle, providers=provider)):
        s = Streamer(backend, bundle.model.dit, stream, prompt, seed=seed)
        runs.append(decisions({"blocks": [r.to_json() for r in s.blocks(blocks)]}))
    diffs = []
    for a, b in zip(*runs):
        keys = [k for k in a if a[k] != b.get(k)]
        if keys:
            diffs.append(f"block {a['index']} differs in {', '.join(keys)}: torch {[a[k] for k in keys]} "
                         f"vs {other.name if other else 'onnxruntime'} {[b.get(k) for k in keys]}")
    return runs[0], runs[1], diffs


def _coverage(dec: list[dict]) -> str:
    retrieved = sum(1 for d in dec if d["retrieved"])
    cells = [c for d in dec for g in d["gate"] for step in g["dropped"] for c in step]
    skipped = sum(1 for d in dec if not d["stored"])
    return (f"{retrieved} blocks retrieved sinks, {sum(cells)}/{len(cells)} gate decisions dropped, "
            f"{skipped} dedup skips")


@click.command("check")
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@click.option("--input-seed", "seed", type=int, default=0, show_default=True, help="Seed of the random graph inputs.")
@shared("--blocks", type=int, default=6, note="Here: the torch vs onnxruntime stream comparison (0: skip it).")
@shared("--dedup-threshold", type=float, default=0.985,
        note="Here above the release's 0.95: the random tiny model's blocks all look alike, and the bank must "
             "grow for blocks to retrieve.")
@shared("--ort-provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu")
@click.option("--engines", is_flag=True,
              help="Check the bundle's TensorRT engines (dysink-export build) instead of its ONNX graphs.")
@click.option("--trt", "trt_versions", multiple=True, type=click.Choice(["10.3", "10.13", "11"]),
              help="Instead: lint every node against this TensorRT version's ONNX parser (operator matrix, dtypes, "
                   "opset, IR version, plugin attributes, 2^31 elements); repeatable; CPU only, no TensorRT needed.")
def check_command(bundle_path, seed, blocks, dedup_threshold, ort_provider, engines, trt_versions):
    """Compare every graph output of a bundle, then a short stream, with the PyTorch reference
    (or, with --trt, lint the bundle against TensorRT parsers)."""
    t0 = time.perf_counter()
    if trt_versions:
        _lint_command(bundle_path, trt_versions, t0)
        return
    if blocks < 0:
        raise DysinkError(f"--blocks must be >= 0, got {blocks}")
    bundle = Bundle.load(bundle_path)
    trt_backend = None
    if engines:
        from ..runtime.backends.tensorrt_backend import TensorRTBackend

        trt_backend = TensorRTBackend(bundle)
        ort_provider = "tensorrt engines"
    models = reference_models(bundle)
    note = " (fp32 twin: bf16 rounding, fp32 arithmetic)" if bundle.precision == "bf16" and not engines else ""
    low = "fp16" if bundle.precision == "fp32" else bundle.precision
    click.echo(f"bundle {bundle.path}: {bundle.model.name}, {bundle.precision}; onnxruntime {ort_provider}{note} "
               f"vs PyTorch fp32; tol = 2 x PyTorch {low} error + {FLOOR:g} x max(1, |ref|)")
    checks = check_graphs(bundle, models, seed=seed, provider=ort_provider, log=click.echo,
                          runner=trt_backend.run_graph if trt_backend else None)
    failed = [c for c in checks if not c.ok]
    stream_failed = False
    if blocks == 0:
        click.echo("stream comparison skipped (--blocks 0)")
    elif bundle.precision == "bf16" and ort_provider == "cpu" and not engines:
        click.echo("stream comparison skipped: the onnxruntime backend cannot run bf16 graphs on CPU")
    elif failed:
        click.echo("stream comparison skipped: graph outputs already differ")
    else:
        dec_torch, dec_ort, diffs = compare_streams(bundle, models, blocks, dedup_threshold, ort_provider, seed,
                                                    other=trt_backend)
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
    from .trt_lint import lint_bundle_report

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
