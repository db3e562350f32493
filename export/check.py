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
import math
import os
import sys

import numpy as np

from ..bundle import Bundle
from ..errors import DysinkError
from ..graph_files import read_graph
from ..graphs import graph_specs
from ..runtime.backends.onnxruntime_backend import load_session, resolve_providers, session_options
from ..runtime.builder import open_streamer
from ..runtime.prompts import default_prompt_embeds
from ..runtime.report import decisions
from ..runtime.spec import RunSpec
from .fp32_twin import fp32_twin

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

    @property
    def margin(self) -> float:
        """How close the output came to its tolerance: error / tol (mismatches for exact outputs)."""
        if self.exact:
            return self.max_abs
        return self.max_abs / self.tol if self.tol > 0 else (0.0 if self.max_abs == 0 else math.inf)

    def detail(self, rel: bool = True) -> str:
        if self.exact:
            return f"{self.output} {int(self.max_abs)} mismatching elements (tol 0)"
        sign = "<=" if self.ok else ">"
        return (f"{self.output} max abs error {self.max_abs:.2e} {sign} tol {self.tol:.2e}"
                + (f" (max rel error {self.max_rel:.1e}, informative only)" if rel else ""))

    def line(self) -> str:
        return f"- [{mark_for(self.ok)}] {self.graph}/{self.detail()}"


def graph_lines(name: str, checks: list[OutputCheck]) -> list[str]:
    """The compact report of one graph: one line (its output count and the output closest to its
    tolerance), after the full line of every output out of tolerance."""
    bad = [c for c in checks if not c.ok]
    lines = [c.line() for c in bad]
    n = f"{len(checks)} output{'s' if len(checks) != 1 else ''}"
    if bad:
        lines.append(f"- [x] {name}: {len(bad)} of {n} out of tolerance")
    elif checks:
        closest = max(checks, key=lambda c: c.margin)
        lines.append(f"- [{mark_for(True)}] {name}: {n} within tolerance (closest: {closest.detail(rel=False)})")
    return lines


def reference_models(bundle: Bundle):
    """The float32 PyTorch models the bundle was exported from (checkpoints recorded in the manifest,
    random weights from the recorded seed otherwise)."""
    from ..models.factory import CheckpointPaths, build_models     # lazy: torch

    rec = bundle.manifest.get("checkpoints") or {}
    paths = CheckpointPaths(dit=rec.get("dit"), lora=rec.get("lora"), vae=rec.get("vae"), pe=rec.get("pe"),
                            use_ema=bool(rec.get("use_ema", False)))
    for name in ("dit", "lora", "vae", "pe"):
        p = getattr(paths, name)
        if p and not os.path.isfile(p):
            raise DysinkError(f"bundle {bundle.path} was exported from {name} checkpoint {p}, which is not there; "
                              "the reference needs the same files (restore them at that path)")
    return build_models(bundle.model, paths if paths.any() else None, seed=int(rec.get("random_seed", 0))).float()


def _session(bundle: Bundle, name: str, provider: str, threads: int | None = None):
    import onnxruntime as ort

    opts = session_options(ort, threads)
    path = str(bundle.graph_path(name))
    providers = list(resolve_providers(provider))
    if bundle.precision == "bf16" and providers[0] == "CPUExecutionProvider":
        model = fp32_twin(read_graph(bundle, name, load_external_data=True))
        return load_session(ort, bundle, name, model.SerializeToString(), opts, providers, fp32_io=True)
    return load_session(ort, bundle, name, path, opts, providers)


def _feed(x):
    """A sample input as ONNX Runtime takes it: bf16 as float32 (the fp32 twin), e4m3 pages as an
    OrtValue over their bits (numpy has no float8)."""
    import torch

    if x.dtype == torch.bfloat16:
        return x.float().numpy()
    if x.dtype == torch.float8_e4m3fn:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(x.view(torch.uint8).numpy(), onnx_element_type=17)
    return x.numpy()


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref.astype(np.float64)), 1e-6)
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def check_graphs(bundle: Bundle, models=None, seed: int = 0, provider: str = "cpu",
                 log=lambda line: None, runner=None, threads: int | None = None,
                 verbose: bool = False) -> list[OutputCheck]:
    """Every output of every graph of `bundle` vs the float32 PyTorch reference (see module docstring).
    `runner(name, feeds) -> outputs` replaces ONNX Runtime (the engines: TensorRTBackend.run_graph).
    `log` gets the graph_lines of each graph as it is done (verbose: one line per output)."""
    import torch

    from ..models.dtypes import TORCH_DTYPES                                     # lazy: torch
    from .graph_modules import graph_module, sample_inputs, text_encoder_graph  # lazy: torch

    models = models if models is not None else reference_models(bundle)
    low = "fp16" if bundle.precision == "fp32" else bundle.precision
    low_models = copy.deepcopy(models).to(TORCH_DTYPES[low])
    low_specs = graph_specs(bundle.model, bundle.stream, low, bundle.encoder_frames, bundle.interactive,
                            bundle.text_encoder is not None, kv_cache_dtype=bundle.kv_cache_dtype,
                            bank_placement=bundle.bank_placement)   # which inputs the low-precision run casts
    checks: list[OutputCheck] = []
    for name, spec in bundle.specs.items():
        inputs = sample_inputs(name, bundle.model, bundle.stream, bundle.precision, seed=seed,
                               kv_cache_dtype=bundle.kv_cache_dtype, bank_placement=bundle.bank_placement)
        ref_in = [x.float() if x.is_floating_point() else x for x in inputs]
        low_in = [x.to(TORCH_DTYPES[low]) if x.is_floating_point() and s.dtype != "float32" else x
                  for x, s in zip(ref_in, low_specs[name].inputs)]
        with torch.inference_mode():
            if name == "umt5_encoder":          # float32 in the reference; its baseline is an fp16 copy
                ref_mod = text_encoder_graph(bundle.text_encoder)
                ref = (ref_mod(*ref_in),)
                base = (copy.deepcopy(ref_mod).half()(*low_in),)
            else:
                ref = graph_module(name, models, bundle.stream, bundle.kv_cache_dtype).eval()(*ref_in)
                base = graph_module(name, low_models, bundle.stream, bundle.kv_cache_dtype).eval()(*low_in)
        feeds = {s.name: _feed(x) for s, x in zip(spec.inputs, inputs)}
        got = runner(name, feeds) if runner else _session(bundle, name, provider, threads).run(
            [s.name for s in spec.outputs], feeds)
        done = len(checks)
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
        for line in ([c.line() for c in checks[done:]] if verbose else graph_lines(name, checks[done:])):
            log(line)
    return checks


def compare_streams(bundle: Bundle, models=None, blocks: int = 6, dedup_threshold: float = 0.985,
                    provider: str = "cpu", seed: int = 0, other: str = "onnxruntime", threads: int | None = None
                    ) -> tuple[list[dict], list[dict], list[str]]:
    """Stream `blocks` blocks on torch (the bundle's weights and precision) and on `other`
    ("onnxruntime" with `provider`, or "tensorrt": the engines) -> (torch decisions, other
    decisions, differences). `models`: the float32 reference models, if already built."""
    rec = bundle.manifest.get("checkpoints") or {}
    prompt = default_prompt_embeds(bundle.model)       # the demo prompt, real weights or not: same on both
    torch_spec = RunSpec(model_config=bundle.model, checkpoint=rec.get("dit"), lora=rec.get("lora"),
                         vae=rec.get("vae"), pe=rec.get("pe"), use_ema=bool(rec.get("use_ema", False)),
                         weights_seed=int(rec.get("random_seed", 0)), precision=bundle.precision, seed=seed,
                         threads=threads, prompt_embeds=prompt, kv_cache_dtype=bundle.kv_cache_dtype,
                         settings={**bundle.stream.to_dict(), "dedup_threshold": dedup_threshold})
    other_spec = RunSpec(backend=other, bundle=str(bundle.path), seed=seed, prompt_embeds=prompt,
                         threads=threads if other == "onnxruntime" else None,
                         ort_provider=provider if other == "onnxruntime" else "cpu",
                         settings={"dedup_threshold": dedup_threshold})
    runs = []
    for spec, kw in ((torch_spec, {"models": copy.deepcopy(models) if models is not None else None}),
                     (other_spec, {"bundle": bundle})):
        streamer, _ = open_streamer(spec, **kw)
        try:
            runs.append(decisions({"blocks": [r.to_json() for r in streamer.blocks(blocks)]}))
        finally:
            streamer.backend.close()
    diffs = []
    for a, b in zip(*runs):
        keys = [k for k in a if a[k] != b.get(k)]
        if keys:
            diffs.append(f"block {a['index']} differs in {', '.join(keys)}: torch {[a[k] for k in keys]} "
                         f"vs {other} {[b.get(k) for k in keys]}")
    return runs[0], runs[1], diffs


def _coverage(dec: list[dict]) -> str:
    retrieved = sum(1 for d in dec if d["retrieved"])
    cells = [c for d in dec for g in d["gate"] for step in g["dropped"] for c in step]
    skipped = sum(1 for d in dec if not d["stored"])
    return (f"{retrieved} blocks retrieved sinks, {sum(cells)}/{len(cells)} gate decisions dropped, "
            f"{skipped} dedup skips")


