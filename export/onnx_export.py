"""PyTorch -> ONNX: one static-shape file per graph of `graphs.graph_specs`, in a bundle.

Python API: `export_onnx(...)` (the `dysink-export onnx` command is a thin
layer over it) and `check_bundle(...)` (manifest + files + ONNX checker).

Each graph is a small wrapper module around the reference model whose
positional inputs/outputs are exactly the contract's, in order. The custom
ops become `dysink::<Op>` nodes (emitted by `*_node` in dysink_deploy/ops)
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

from ..bundle import MANIFEST_NAME, BUNDLE_FORMAT_VERSION, GRAPH_STREAM_FIELDS, Bundle, rebuild_command, write_manifest
from ..config import ModelConfig, StreamConfig, model_preset
from ..atomic import staged_directory
from ..errors import DysinkError
from ..graphs import GraphSpec, check_encoder_frames, graph_specs
from ..models.dit import DiTStep, WindowRecache
from ..models.factory import CheckpointPaths, DySinkModels, build_models
from ..ops.gated_sink_attention import ONNX_DOMAIN, ONNX_DOMAIN_VERSION
from ..ops.retrieve_sinks import retrieve_sinks_node
from ..rope import rope_phases, timestep_frequencies

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
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SPEC_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "bool": torch.bool}
# Protobuf cannot serialise a model over 2 GiB: above this the weights go to <file>.data.
EXTERNAL_DATA_BYTES = 1_800_000_000


# ---------------------------------------------------------------------------
# one wrapper module per graph: forward(*contract inputs) -> contract outputs
# ---------------------------------------------------------------------------
class TextEncoderGraph(nn.Module):
    """prompt_embeds [T, text_dim] float32 -> text_k, text_v [layers, T, H, D] (once per prompt)."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.dit = models.dit

    def forward(self, prompt_embeds):
        return self.dit.text_kv(prompt_embeds)


class DiTStepGraph(nn.Module):
    """The contract's flat inputs (x_t, t, t_freq, text_k, text_v, rope, k_pool_0.., v_pool_0.., local_ids,
    sink_ids) -> (x0, k_new, v_new, ratios), through `DiTStep`."""

    def __init__(self, models: DySinkModels, stream: StreamConfig):
        super().__init__()
        self.step = DiTStep(models.dit, stream)
        self.layers = models.dit.cfg.layers

    def forward(self, x_t, t, t_freq, text_k, text_v, rope, *pools_and_ids):
        n = self.layers
        k_pools, v_pools = list(pools_and_ids[:n]), list(pools_and_ids[n:2 * n])
        local_ids, sink_ids = pools_and_ids[2 * n:]
        return self.step(x_t, t, text_k, text_v, rope, k_pools, v_pools, local_ids, sink_ids, t_freq=t_freq)


class RecacheGraph(nn.Module):
    """(x, t, t_freq, text_k, text_v, rope, key_valid) -> (k, v) through `WindowRecache`."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.recache = WindowRecache(models.dit)

    def forward(self, x, t, t_freq, text_k, text_v, rope, key_valid):
        return self.recache(x, t, t_freq, text_k, text_v, rope, key_valid)


class TextEncoderGraphUMT5(nn.Module):
    """(ids [1, L], mask [1, L]) -> prompt_embeds [L, dim] through the umT5 encoder (float32)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids, mask):
        return self.encoder(ids, mask)[0].float()


def text_encoder_graph(record: dict) -> nn.Module:
    """The umt5_encoder graph's module from its manifest record (float32, like the reference)."""
    from ..models.umt5 import build_text_encoder, text_encoder_preset

    cfg = text_encoder_preset(record["preset"])
    return TextEncoderGraphUMT5(build_text_encoder(cfg, record.get("checkpoint"),
                                                   seed=int(record.get("random_seed", 0)))).eval()


class RetrieveGraph(nn.Module):
    """RetrieveSinks over the bank, sink_size and top_k of the stream config baked in."""

    def __init__(self, stream: StreamConfig):
        super().__init__()
        self.sink_size, self.k = stream.sink_size, stream.top_k

    def forward(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames):
        return retrieve_sinks_node(bank_feats, bank_start, queries, query_valid, current_start,
                                   window_frames, self.sink_size, self.k)


class VAEDecodeGraph(nn.Module):
    """(z [1, C, F, h, w], cache_0..) -> (frames, cache_out_0..); `first` applies Wan's first-frame rule
    and takes z alone (the stream starts from zero history)."""

    def __init__(self, models: DySinkModels, first: bool):
        super().__init__()
        self.vae, self.first = models.vae, first

    def forward(self, z, *cache):
        frames, new_cache = self.vae.decode_block(z, None if self.first else list(cache), self.first)
        return (frames, *new_cache)


class MemoryEncoderGraph(nn.Module):
    """frames [1, 3, T, H, W] in [-1, 1] -> unit bank feature [1, F] float32 (PE-Core `block_feature`)."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.pe = models.pe

    def forward(self, frames):
        return self.pe.block_feature(frames).float()


def graph_module(name: str, models: DySinkModels, stream: StreamConfig) -> nn.Module:
    if name == "text_encoder":
        return TextEncoderGraph(models)
    if name == "dit_step":
        return DiTStepGraph(models, stream)
    if name == "retrieve":
        return RetrieveGraph(stream)
    if name == "dit_recache":
        return RecacheGraph(models)
    if name in ("vae_decode_first", "vae_decode"):
        return VAEDecodeGraph(models, first=(name == "vae_decode_first"))
    if name.startswith("memory_encoder_t"):
        return MemoryEncoderGraph(models)
    raise KeyError(name)


# ---------------------------------------------------------------------------
# sample inputs (export tracing, tests, checks)
# ---------------------------------------------------------------------------
def sample_inputs(name: str, model: ModelConfig, stream: StreamConfig, precision: str,
                  seed: int = 0) -> list[Tensor]:
    """Plausible inputs for graph `name`, in contract order (seeded).

    Page ids: half the local slots and every sink slot hold distinct valid
    pages, the rest -1; bank: a third of the slots empty; RoPE: the real
    phases of a block at frame 9.
    """
    extra = (int(name[len("memory_encoder_t"):]),) if name.startswith("memory_encoder_t") else ()
    spec = graph_specs(model, stream, precision, extra, interactive=(name == "dit_recache"),
                       text_encoder=(name == "umt5_encoder"))[name]
    g = torch.Generator().manual_seed(seed)
    d = model.dit
    pages = torch.randperm(stream.pool_pages, generator=g)
    out: list[Tensor] = []
    for t in spec.inputs:
        dtype = _SPEC_DTYPES[t.dtype]
        recache = name == "dit_recache"        # its t is 0 (context_noise), its frames a whole window
        step = 0.0 if recache else stream.timesteps()[min(1, len(stream.timesteps()) - 1)]
        if t.name == "t":
            x = torch.tensor(step, dtype=torch.float32)
        elif t.name == "t_freq":
            x = torch.from_numpy(timestep_frequencies(step, d.freq_dim))
        elif t.name == "rope":
            lat_h, lat_w = stream.latent_hw
            frames = stream.window_frames(0) if recache else stream.block_frames
            x = torch.from_numpy(rope_phases(d, 9, frames, lat_h // d.patch[1], lat_w // d.patch[2]))
        elif name == "umt5_encoder" and t.name in ("ids", "mask"):   # 77 tokens, then padding
            valid = torch.arange(t.shape[1]) < min(77, t.shape[1])
            x = (torch.randint(2, 100, t.shape, generator=g) * valid if t.name == "ids" else valid[None].long())
        elif t.name == "key_valid":                   # the first two thirds valid, the rest padding
            per_frame = t.shape[0] // stream.window_frames(0)
            valid = (2 * stream.window_frames(0) // 3) // stream.block_frames * stream.block_frames
            x = torch.arange(t.shape[0]) < valid * per_frame
        elif t.name == "local_ids":
            n = t.shape[0]
            x = torch.cat([pages[:(n + 1) // 2], torch.full((n - (n + 1) // 2,), -1)]).to(dtype)
        elif t.name == "sink_ids":
            x = pages[-t.shape[0]:].to(dtype) if t.shape[0] else torch.zeros(0, dtype=dtype)
        elif t.name == "bank_start":
            c = t.shape[0]
            starts = torch.randperm(max(c, 12), generator=g)[:c] * stream.block_frames
            x = torch.where(torch.rand(c, generator=g) < 1 / 3, torch.full_like(starts, -1), starts)
        elif t.name in ("bank_feats", "queries"):
            x = torch.nn.functional.normalize(torch.randn(t.shape, generator=g), dim=-1)
        elif t.name == "query_valid":
            x = torch.arange(t.shape[0]) < max(1, t.shape[0] - 1)
        elif t.name == "current_start":
            x = torch.tensor(12 * stream.block_frames, dtype=dtype)
        elif t.name == "window_frames":
            x = torch.tensor(stream.window_frames(1), dtype=dtype)
        elif t.name == "frames":
            x = torch.rand(t.shape, generator=g) * 2 - 1
        else:
            x = torch.randn(t.shape, generator=g)
            if t.name.startswith("cache_"):
                x = 0.5 * x
        out.append(x.to(dtype))
    return out


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


def _elem_dtype_name(elem_type: int) -> str:
    import onnx
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
            onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64",
            onnx.TensorProto.BOOL: "bool"}.get(elem_type, f"onnx:{elem_type}")


def io_specs_of(model_proto) -> tuple[list[tuple], list[tuple]]:
    """[(name, shape, dtype)] of a ModelProto's graph inputs and outputs."""
    def one(v):
        tt = v.type.tensor_type
        return (v.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim),
                _elem_dtype_name(tt.elem_type))
    return [one(v) for v in model_proto.graph.input], [one(v) for v in model_proto.graph.output]


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


def export_graph(module: nn.Module, spec: GraphSpec, args: Sequence[Tensor], path: str | os.PathLike,
                 opset: int = DEFAULT_OPSET, ir_version: int = DEFAULT_IR_VERSION) -> dict:
    """Export `module(*args)` to `path` (plus `path`.data when over 2 GB) and check it.

    Returns {"file", "external_data", "custom_ops"} for the manifest (names relative to path's folder).
    """
    import onnx
    import onnx_ir as ir
    import onnxscript

    from ..ops.onnx_functions import function_protos

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
                text_encoder: dict | None = None, **stream_overrides) -> Path:
    """Export every graph of the contract for one stream configuration into bundle `out`.

    model: preset name or ModelConfig. checkpoints: weights (random from `seed`
    otherwise). stream / stream_overrides: the stream configuration (default:
    the preset's released one). graphs: a subset of the contract (default all).
    opset / ir_version: of every graph and function body (default: `default_opset(precision)`).
    encoder_frames: extra memory_encoder_tN graphs (PE-Core on N frames) beside the stream's own.
    interactive: also the dit_recache graph that prompt switches need.
    text_encoder: {"preset", "checkpoint" or None, "random_seed"}: also the umt5_encoder graph.
    The bundle is written to a temporary sibling directory and renamed to
    `out` only when complete; on any error nothing is left behind.
    Returns the bundle path.
    """
    cfg, stream = resolve_config(model, stream, **stream_overrides)
    if precision not in TORCH_DTYPES:
        raise DysinkError(f"precision must be one of {', '.join(TORCH_DTYPES)}, got {precision!r}")
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
        from ..models.umt5 import text_encoder_preset

        width = text_encoder_preset(text_encoder["preset"]).dim
        if width != cfg.dit.text_dim:
            raise DysinkError(f"the {text_encoder['preset']} text encoder gives width {width}, the model reads "
                              f"{cfg.dit.text_dim}; use the matching --text-encoder-preset")
    specs = graph_specs(cfg, stream, precision, encoder_frames, interactive, text_encoder is not None)
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

    models = build_models(cfg, checkpoints, seed=seed).to(TORCH_DTYPES[precision]).eval()
    with staged_directory(out) as tmp:
        entries = {}
        for name in names:
            t0 = time.perf_counter()
            module = (text_encoder_graph(text_encoder) if name == "umt5_encoder"
                      else graph_module(name, models, stream).eval())
            args = sample_inputs(name, cfg, stream, precision, seed=seed)
            entries[name] = export_graph(module, specs[name], args, tmp / f"{name}.onnx", opset, ir_version)
            log(f"exported {name} ({time.perf_counter() - t0:.1f}s)")
        write_manifest(tmp, cfg, stream, precision, entries, encoder_frames=encoder_frames, interactive=interactive,
                       extra={
            "opset": opset,
            "ir_version": ir_version,
            "custom_op_domain": {"domain": ONNX_DOMAIN, "version": ONNX_DOMAIN_VERSION},
            "checkpoints": _checkpoint_record(checkpoints, seed),
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


def check_bundle(path: str | os.PathLike, verify_hashes: bool = True, run_checker: bool = True,
                 **expect) -> Bundle:
    """`Bundle.load` plus the ONNX checker (full check) on every graph file."""
    import onnx

    bundle = Bundle.load(path, verify_hashes=verify_hashes, **expect)
    if run_checker:
        for name in bundle.graphs:
            try:
                onnx.checker.check_model(str(bundle.graph_path(name)), full_check=True)
            except Exception as exc:  # noqa: BLE001 (checker and protobuf raise several types)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DysinkError(f"bundle {bundle.path}: {bundle.graphs[name].file} (graph {name}) fails the "
                                  f"ONNX checker ({first[:200]}); rebuild it: {bundle.rebuild_command()}") from None
    return bundle


def fp32_twin(model_proto):
    """A float32 copy of a bf16 model, for checking its numerics where bf16 kernels are missing
    (ONNX Runtime CPU has none for MatMul, Softmax, Add...).

    Weights, constants and I/O become float32 (bf16 values are exact in fp32);
    every explicit Cast to bf16 becomes Cast(bf16) -> Cast(float32), so the
    graph still rounds where the bf16 model rounds on purpose (x0, sink K/V).
    Arithmetic runs in fp32: this checks the graph, not bf16 arithmetic error.
    The function bodies are dtype-polymorphic and need no change.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def fix_tensor(t):
        if t.data_type == bf16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))

    def fix_graph(g):
        for t in g.initializer:
            fix_tensor(t)
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if v.type.tensor_type.elem_type == bf16:
                v.type.tensor_type.elem_type = f32
        nodes = []
        for n in g.node:
            nodes.append(n)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    fix_tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    fix_graph(a.g)
            if n.op_type == "Cast" and n.domain == "" and any(a.name == "to" and a.i == bf16 for a in n.attribute):
                rounded = n.output[0] + "__bf16"
                back = onnx.helper.make_node("Cast", [rounded], [n.output[0]], to=f32, name=n.name + "__to_fp32")
                n.output[0] = rounded
                nodes.append(back)
        del g.node[:]
        g.node.extend(nodes)

    fix_graph(m.graph)
    return m


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def describe_bundle(bundle: Bundle) -> list[str]:
    """Human-readable lines: configs, versions, and per graph its file, size, opsets, I/O, custom nodes."""
    import onnx

    m, s = bundle.model, bundle.stream
    lines = [f"bundle {bundle.path}  (format {bundle.format_version}, {bundle.manifest.get('kind')}, "
             f"{bundle.precision})",
             f"model {m.name}: DiT {m.dit.layers} layers, dim {m.dit.dim}, {m.dit.heads} heads; "
             f"VAE dim {m.vae.dim}; PE width {m.pe.width}",
             "stream: " + ", ".join(f"{n}={getattr(s, n)}" for n in GRAPH_STREAM_FIELDS)
             + f"; pool_pages={s.pool_pages}, local_slots={s.local_slots}, sink_slots={s.sink_slots}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in bundle.manifest.get("versions", {}).items())]
    total = 0
    for name, g in bundle.graphs.items():
        proto = onnx.load(str(bundle.graph_path(name)), load_external_data=False)
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
        files = g.file + "".join(f" + {d['file']}" for d in g.external_data)
        total += g.total_bytes
        lines.append(f"graph {name}: {files} ({_mb(g.total_bytes)}), ir {proto.ir_version}, opsets [{opsets}], "
                     f"functions [{', '.join(f.domain + '::' + f.name for f in proto.functions)}]")
        for kind, specs in (("in ", g.spec.inputs), ("out", g.spec.outputs)):
            caches = [t for t in specs if t.name.startswith("cache_")]
            for t in specs:
                if not t.name.startswith("cache_"):
                    lines.append(f"  {kind} {t.name:<16} {str(list(t.shape)):<24} {t.dtype}")
            if caches:                     # the VAE's streaming caches: one line, not one per tensor
                stem = caches[0].name.rsplit("_", 1)[0]
                label = f"{stem}_0..{len(caches) - 1}"
                lines.append(f"  {kind} {label:<16} {f'{len(caches)} tensors, {_mb(sum(c.nbytes for c in caches))}':<24} "
                             f"{caches[0].dtype}")
        custom: dict[tuple, int] = {}
        for node in proto.graph.node:
            if node.domain == ONNX_DOMAIN:
                attrs = ", ".join(f"{a.name}={_attr(a)}" for a in sorted(node.attribute, key=lambda a: a.name))
                key = (node.op_type, attrs)
                custom[key] = custom.get(key, 0) + 1
        version = next((o.version for o in proto.opset_import if o.domain == ONNX_DOMAIN), None)
        for (op_type, attrs), count in custom.items():
            lines.append(f"  node {ONNX_DOMAIN}::{op_type} x{count} (domain version {version}; {attrs})")
    missing = [n for n in graph_specs(m, s, bundle.precision) if n not in bundle.graphs]
    lines.append(f"{len(bundle.graphs)} graphs, {_mb(total)}"
                 + (f"; partial bundle, lacks {', '.join(missing)}" if missing else ""))
    return lines


def _attr(a) -> str:
    import onnx

    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else (f"{v:g}" if isinstance(v, float) else str(v))


__all__ = ["describe_bundle", "BUNDLE_FORMAT_VERSION", "OPSET", "DEFAULT_OPSET", "DEFAULT_IR_VERSION", "check_bundle", "export_graph", "export_onnx", "graph_module",
           "io_specs_of", "rebuild_command", "resolve_config", "sample_inputs"]
