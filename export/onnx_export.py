"""PyTorch -> ONNX: one static-shape file per graph of `graphs.graph_specs`, in a bundle.

Python API: `export_onnx(...)` (the `dysink-export onnx` command is a thin
layer over it) and `check_bundle(...)` (manifest + files + ONNX checker;
defined in inspect_bundle.py, importable from here).

Each graph is a small wrapper module around the reference model whose
positional inputs/outputs are exactly the contract's, in order (graph_modules.py).
The custom ops become `dysink::<Op>` nodes (emitted by `*_node` in dysink_deploy/ops)
and get their bodies attached as model-local functions (ops/onnx_functions.py),
so ONNX Runtime runs the same file TensorRT parses with its plugins.
Precision lives in the graph: the modules are cast to the precision and
export their own fp32 islands (norm statistics, softmax, gate, RoPE).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..bundle import MANIFEST_NAME, BUNDLE_FORMAT_VERSION, Bundle, rebuild_command, write_manifest
from ..config import ModelConfig, StreamConfig, model_preset
from ..atomic import staged_directory
from ..errors import DysinkError
from ..graphs import (BANK_PLACEMENTS, KV_CACHE_DTYPES, VAE_LAYOUTS, GraphSpec, check_encoder_frames, graph_specs,
                      resolve_vae_layout)
from ..models.dtypes import TORCH_DTYPES, torch_dtype  # noqa: F401  (TORCH_DTYPES: re-export, check.py)
from ..models.factory import CheckpointPaths, build_models
from ..models.umt5 import text_encoder_preset
from ..ops.gated_sink_attention import ONNX_DOMAIN, ONNX_DOMAIN_VERSION
from .fp32_twin import fp32_twin  # noqa: F401  (re-export: check.py imports it from here)
from .graph_modules import graph_module, sample_inputs, text_encoder_graph
from .inspect_bundle import check_bundle, io_specs_of  # noqa: F401  (check_bundle: re-export, documented here)
from .owned import bundle_owned

# torch's exporter warns, on every export, that torchvision's ops cannot be
# registered; we use none of them, so the warnings only bury real output.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
# onnxscript's constant folder says it leaves a multi-output Split alone (TensorRT folds it itself),
# and torch warns about its own pytree API on every export: neither is anything a user can act on.
logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)

# Defaults that every TensorRT parser we target documents as supported: the 10.x
# parser's operator matrix covers opsets 9..20 (TensorRT 11: up to 25); opset 20
# is ONNX 1.15, whose IR version is 9. bf16 is the exception: ONNX's Conv has no
# bfloat16 before opset 22, so bf16 bundles default to opset 22 (IR 10), which the
# TensorRT 11 parsers accept and the 10.x ones do not document (use fp16 there).
# `--opset` / `--ir-version` override them.
DEFAULT_OPSET = 20
DEFAULT_IR_VERSION = 9
BF16_OPSET, BF16_IR_VERSION = 22, 10
OPSETS = range(18, 24)            # what the exporter and the function bodies support
OPSET = DEFAULT_OPSET             # kept for callers that read the default
_MIN_IR = {18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11}


def default_opset(precision: str) -> tuple[int, int]:
    """(opset, IR version) an export uses when none is given."""
    return (BF16_OPSET, BF16_IR_VERSION) if precision == "bf16" else (DEFAULT_OPSET, DEFAULT_IR_VERSION)


# Protobuf cannot serialise a model over 2 GiB: above this the weights go to <file>.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


# ---------------------------------------------------------------------------
# export of one graph
# ---------------------------------------------------------------------------
def _sdpa_matmul_softmax(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
    """aten SDPA -> MatMul / Softmax(float32) / MatMul, for any rank.

    The opset-23 translation emits the standard `Attention` op, which
    the TensorRT parsers we target (10.3, 10.13) lack, and it refuses the
    DiT's 3-D cross-attention. Softmax runs in float32 like torch's CPU/CUDA
    kernels accumulate; the two MatMuls stay in the input dtype.
    """
    from onnxscript import opset18 as op   # these ops are unchanged up to opset 23

    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise NotImplementedError("only plain (unmasked, non-causal) attention is exported")
    rank = len(query.shape)
    factor = float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = op.Cast(op.MatMul(query, op.Transpose(key, perm=perm)), to=1)       # 1 = FLOAT
    probs = op.Softmax(op.Mul(scores, op.Constant(value_float=factor)), axis=-1)
    return op.MatMul(op.CastLike(probs, query), value)


def _check_io(model_proto, spec: GraphSpec) -> None:
    ins, outs = io_specs_of(model_proto)
    want_in = [(t.name, t.shape, t.dtype) for t in spec.inputs]
    want_out = [(t.name, t.shape, t.dtype) for t in spec.outputs]
    if ins != want_in or outs != want_out:
        bad = next((f"{a} != {b}" for a, b in zip(ins + outs, want_in + want_out) if a != b),
                   f"{len(ins)}/{len(outs)} inputs/outputs, expected {len(want_in)}/{len(want_out)}")
        raise RuntimeError(f"exported {spec.name} does not match its contract: {bad}")


def check_opset(opset: int, ir_version: int, precision: str | None = None) -> None:
    if opset not in OPSETS:
        raise DysinkError(f"--opset must lie in {OPSETS.start}..{OPSETS.stop - 1} (the exporter's and the custom ops' "
                          f"range; TensorRT 10.x parsers accept up to 20), got {opset}")
    if not 8 <= ir_version <= 11:
        raise DysinkError(f"--ir-version must lie in 8..11, got {ir_version}")
    if ir_version < _MIN_IR[opset]:
        raise DysinkError(f"opset {opset} needs IR version >= {_MIN_IR[opset]}, got --ir-version {ir_version}")
    if precision == "bf16" and opset < BF16_OPSET:
        raise DysinkError(f"a bf16 bundle needs --opset >= {BF16_OPSET} (ONNX's Conv has no bfloat16 before opset 22), "
                          f"got {opset}; for TensorRT 10.x export fp16 instead")


def trace_inputs(spec: GraphSpec) -> list[Tensor]:
    """Storage-free example inputs for tracing `spec`: fake tensors of the contract's shapes and dtypes.

    The trace reads only shapes and dtypes, never values, so the graph is the one that
    seeded real inputs give (tests/export/test_export_memory.py compares them); the K/V
    pools (18 GB at 480x832 for the 1.3B model) are never allocated.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # lazy: torch internals, export only

    from .graph_modules import _SPEC_DTYPES  # lazy: the contract's dtype table

    with FakeTensorMode():
        return [torch.empty(t.shape, dtype=_SPEC_DTYPES[t.dtype]) for t in spec.inputs]


def export_graph(module: nn.Module, spec: GraphSpec, args: Sequence[Tensor], path: str | os.PathLike,
                 opset: int = DEFAULT_OPSET, ir_version: int = DEFAULT_IR_VERSION) -> dict:
    """Export `module(*args)` to `path` (plus `path`.data when over 2 GB) and check it.

    Returns {"file", "external_data", "custom_ops"} for the manifest (names relative to path's folder).
    """
    import onnx
    import onnx_ir as ir
    import onnxscript

    from ..ops.onnx_functions import CALLS, function_protos  # lazy: onnxscript

    check_opset(opset, ir_version)
    path = Path(path)
    with torch.no_grad():
        # optimize=False, then onnxscript's plain optimizer: torch's own pass also fuses
        # RMSNormalization, a standard op that TensorRT 10.3 / 10.13 parsers lack.
        prog = torch.onnx.export(module, tuple(args), dynamo=True, opset_version=opset, verbose=False,
                                 optimize=False,
                                 input_names=[t.name for t in spec.inputs],
                                 output_names=[t.name for t in spec.outputs],
                                 custom_translation_table={
                                     torch.ops.aten.scaled_dot_product_attention.default: _sdpa_matmul_softmax})
    model = prog.model
    # Constant folding + dead-code removal only; the optimizer's pattern rewrites
    # cost most of the export time and change nothing TensorRT would not fold itself.
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    used = sorted({n.op_type for n in model.graph.all_nodes() if n.domain == ONNX_DOMAIN})
    used = sorted(set(used).union(*(CALLS.get(u, ()) for u in used)))
    if used:
        for proto in function_protos(opset):
            if proto.name in used:
                fn = ir.serde.deserialize_function(proto)
                model.functions[fn.identifier()] = fn
        model.opset_imports[ONNX_DOMAIN] = ONNX_DOMAIN_VERSION
    foreign = sorted({n.domain for n in model.graph.all_nodes()} - {"", ONNX_DOMAIN})
    if foreign:  # e.g. com.microsoft: ORT-only, TensorRT would reject the file
        raise RuntimeError(f"exported {spec.name} uses non-standard op domains {foreign}")
    if model.opset_imports.get("") != opset:
        raise RuntimeError(f"exported {spec.name} has opset {model.opset_imports.get('')}, expected {opset}")
    model.ir_version = ir_version
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    prog.save(str(path), external_data=external)
    data_file = path.name + ".data"
    if not external and (path.parent / data_file).exists():
        (path.parent / data_file).unlink()
    # By path: works for files with external data too (an in-memory >2 GB proto cannot be checked).
    onnx.checker.check_model(str(path), full_check=True)
    _check_io(onnx.load(str(path), load_external_data=False), spec)
    return {"file": path.name, "external_data": [data_file] if external else [],
            "custom_ops": [f"{ONNX_DOMAIN}::{op}" for op in used]}


# ---------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------
def resolve_config(model: str | ModelConfig, stream: StreamConfig | None = None,
                   **stream_overrides) -> tuple[ModelConfig, StreamConfig]:
    cfg = model_preset(model) if isinstance(model, str) else model
    if stream is None:
        stream = cfg.default_stream(**stream_overrides)
    elif stream_overrides:
        stream = dataclasses.replace(stream, **stream_overrides)
    return cfg, stream


def export_onnx(model: str | ModelConfig, checkpoints: CheckpointPaths | None = None, precision: str = "fp32",
                out: str | os.PathLike = "bundle", stream: StreamConfig | None = None, *,
                graphs: Iterable[str] | None = None, overwrite: bool = False, seed: int = 0,
                log: Callable[[str], None] | None = None, opset: int | None = None,
                ir_version: int | None = None, encoder_frames: Iterable[int] = (), interactive: bool = False,
                text_encoder: dict | None = None, kv_cache_dtype: str = "auto", bank_placement: str = "device",
                vae_layout: str = "auto", **stream_overrides) -> Path:
    """Export every graph of the contract for one stream configuration into bundle `out`.

    model: preset name or ModelConfig. checkpoints: weights (random from `seed`
    otherwise). stream / stream_overrides: the stream configuration (default:
    the preset's released one). graphs: a subset of the contract (default all).
    opset / ir_version: of every graph and function body (default: `default_opset(precision)`).
    encoder_frames: extra memory_encoder_tN graphs (PE-Core on N frames) beside the stream's own.
    interactive: also the dit_recache graph that prompt switches need.
    text_encoder: {"preset", "checkpoint" or None, "random_seed"}: also the umt5_encoder graph.
    kv_cache_dtype: the K/V pages' storage (auto | bf16 | fp8 | int8; ops/kv_pages.py), fixed by the
    dit_step graph's pool inputs and recorded in the manifest. bank_placement: host cuts the pools to
    the device slots (the bank's pages live in host memory at run time: runtime/host_bank.py).
    vae_layout: the VAE graphs' inner layout (auto | channels | frames; graphs.VAE_LAYOUTS), recorded in
    the manifest; the graphs' inputs and outputs are the same either way.
    The bundle is written to a temporary sibling directory and renamed to
    `out` only when complete; on any error nothing is left behind.
    Returns the bundle path.
    """
    cfg, stream = resolve_config(model, stream, **stream_overrides)
    dtype = torch_dtype(precision)
    default = default_opset(precision)
    opset = default[0] if opset is None else opset
    if ir_version is None:
        ir_version = default[1] if opset == default[0] else _MIN_IR.get(opset, default[1])
    check_opset(opset, ir_version, precision)
    try:
        encoder_frames = check_encoder_frames(list(encoder_frames))
    except ValueError as exc:
        raise DysinkError(f"--encoder-frames: {exc}") from None
    if text_encoder is not None:
        width = text_encoder_preset(text_encoder["preset"]).dim
        if width != cfg.dit.text_dim:
            raise DysinkError(f"the {text_encoder['preset']} text encoder gives width {width}, the model reads "
                              f"{cfg.dit.text_dim}; use the matching --text-encoder-preset")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise DysinkError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
    if bank_placement not in BANK_PLACEMENTS:
        raise DysinkError(f"--bank-placement must be one of {', '.join(BANK_PLACEMENTS)}, got {bank_placement!r}")
    if vae_layout not in VAE_LAYOUTS:
        raise DysinkError(f"--vae-layout must be one of {', '.join(VAE_LAYOUTS)}, got {vae_layout!r}")
    vae_layout = resolve_vae_layout(vae_layout, precision)
    specs = graph_specs(cfg, stream, precision, encoder_frames, interactive, text_encoder is not None,
                        kv_cache_dtype=kv_cache_dtype, bank_placement=bank_placement)
    names = list(specs) if graphs is None else list(graphs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise DysinkError(f"unknown graph(s) {', '.join(unknown)}; this configuration has: {', '.join(specs)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DysinkError(f"{out} already exists; remove it or pass --overwrite")
    if out.exists() and (out.is_symlink() or not (out / MANIFEST_NAME).is_file()):
        raise DysinkError(f"--out {out} is not a bundle (no {MANIFEST_NAME}); --overwrite replaces bundles only, "
                          "nothing was touched: choose another --out")
    log = log or (lambda msg: None)

    # Checked and locked before the weights are built: a foreign file, a lost graph, another export.
    with staged_directory(out, bundle_owned(names if graphs is not None else None), "dysink-export onnx") as tmp:
        models = build_models(cfg, checkpoints, seed=seed).to(dtype).eval()
        entries = {}
        for name in names:
            t0 = time.perf_counter()
            module = (text_encoder_graph(text_encoder) if name == "umt5_encoder"
                      else graph_module(name, models, stream, kv_cache_dtype, vae_layout).eval())
            args = trace_inputs(specs[name])
            entries[name] = export_graph(module, specs[name], args, tmp / f"{name}.onnx", opset, ir_version)
            log(f"exported {name} ({time.perf_counter() - t0:.1f}s)")
        write_manifest(tmp, cfg, stream, precision, entries, encoder_frames=encoder_frames, interactive=interactive,
                       extra={
            "opset": opset,
            "ir_version": ir_version,
            "custom_op_domain": {"domain": ONNX_DOMAIN, "version": ONNX_DOMAIN_VERSION},
            "checkpoints": _checkpoint_record(checkpoints, seed),
            **({"kv_cache_dtype": kv_cache_dtype} if kv_cache_dtype != "auto" else {}),
            **({"bank_placement": bank_placement} if bank_placement != "device" else {}),
            "vae_layout": vae_layout,
            **({"text_encoder": {"preset": text_encoder["preset"],
                                 "checkpoint": (str(Path(text_encoder["checkpoint"]).resolve())
                                                if text_encoder.get("checkpoint") else None),
                                 "random_seed": int(text_encoder.get("random_seed", 0))}}
               if text_encoder is not None else {}),
            "versions": _versions(),
        })
        Bundle.load(tmp, require=names)  # what the runtime will see, before it becomes visible
    return out


def _checkpoint_record(paths: CheckpointPaths | None, seed: int) -> dict:
    if paths is None or not paths.any():
        return {"random_seed": seed}
    rec = {k: (str(Path(v).resolve()) if v else None) for k, v in
           (("dit", paths.dit), ("lora", paths.lora), ("vae", paths.vae), ("pe", paths.pe))}
    rec["use_ema"] = paths.use_ema
    if not all((paths.dit, paths.vae, paths.pe)):
        rec["random_seed"] = seed  # the networks without a checkpoint are random
    return rec


def _versions() -> dict:
    import onnx
    import onnxscript

    try:
        from importlib.metadata import version
        own = version("dysink-deploy")
    except Exception:  # noqa: BLE001
        own = "unknown"
    return {"dysink_deploy": own, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "python": sys.version.split()[0]}


__all__ = ["BUNDLE_FORMAT_VERSION", "OPSET", "DEFAULT_OPSET", "DEFAULT_IR_VERSION", "TORCH_DTYPES", "check_bundle",
           "export_graph", "export_onnx", "fp32_twin", "graph_module", "io_specs_of", "rebuild_command",
           "resolve_config", "sample_inputs", "text_encoder_graph"]
