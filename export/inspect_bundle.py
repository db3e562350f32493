"""What `dysink-export inspect` does: validate a bundle (`check_bundle`) and describe it (`describe_bundle`).

Also `io_specs_of`, the (name, shape, dtype) of an ONNX model's inputs and outputs.
Torch-free: onnx is imported inside the functions that read ONNX files.
"""

from __future__ import annotations

import os

from ..bundle import GRAPH_STREAM_FIELDS, Bundle
from ..errors import DysinkError
from ..graph_files import read_graph
from ..graphs import graph_specs
from .trt_onnx import PLUGIN_DOMAIN as ONNX_DOMAIN   # = ops.gated_sink_attention.ONNX_DOMAIN, without torch


def _elem_dtype_name(elem_type: int) -> str:
    import onnx
    return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
            onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
            onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT8: "int8",
            onnx.TensorProto.FLOAT8E4M3FN: "float8e4m3fn"}.get(elem_type, f"onnx:{elem_type}")


def io_specs_of(model_proto) -> tuple[list[tuple], list[tuple]]:
    """[(name, shape, dtype)] of a ModelProto's graph inputs and outputs."""
    def one(v):
        tt = v.type.tensor_type
        return (v.name, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim),
                _elem_dtype_name(tt.elem_type))
    return [one(v) for v in model_proto.graph.input], [one(v) for v in model_proto.graph.output]


def check_bundle(path: str | os.PathLike, verify_hashes: bool = True, run_checker: bool = True,
                 graphs_read: dict | None = None, **expect) -> Bundle:
    """`Bundle.load`, every graph file read and its I/O checked against the manifest's contract
    (graph_files.read_graph: a truncated file is one line), plus the ONNX checker (full check).
    graphs_read: filled with name -> the ModelProto read (weights left on disk), for `describe_bundle`."""
    import onnx

    bundle = Bundle.load(path, verify_hashes=verify_hashes, **expect)
    for name in bundle.graphs:
        proto = read_graph(bundle, name)
        if graphs_read is not None:
            graphs_read[name] = proto
    if run_checker:
        for name in bundle.graphs:
            try:
                onnx.checker.check_model(str(bundle.graph_path(name)), full_check=True)
            except Exception as exc:  # noqa: BLE001 (checker and protobuf raise several types)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DysinkError(f"bundle {bundle.path}: {bundle.graphs[name].file} (graph {name}) fails the "
                                  f"ONNX checker ({first[:200]}); rebuild it: {bundle.rebuild_command()}") from None
    return bundle


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def describe_bundle(bundle: Bundle, graphs_read: dict | None = None) -> list[str]:
    """Human-readable lines: configs, versions, and per graph its file, size, opsets, I/O, custom nodes
    (each graph read here unless `graphs_read`, from `check_bundle`, holds it already)."""
    m, s = bundle.model, bundle.stream
    lines = [f"bundle {bundle.path}  (format {bundle.format_version}, {bundle.manifest.get('kind')}, "
             f"{bundle.precision})",
             f"model {m.name}: DiT {m.dit.layers} layers, dim {m.dit.dim}, {m.dit.heads} heads; "
             f"VAE dim {m.vae.dim}; PE width {m.pe.width}",
             "stream: " + ", ".join(f"{n}={getattr(s, n)}" for n in GRAPH_STREAM_FIELDS)
             + f"; pool_pages={s.pool_pages}, local_slots={s.local_slots}, sink_slots={s.sink_slots}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in bundle.manifest.get("versions", {}).items()),
             f"VAE graphs' layout: {bundle.vae_layout}"]
    total = 0
    for name, g in bundle.graphs.items():
        proto = (graphs_read or {}).get(name) or read_graph(bundle, name, check_io=False)  # one line if not ONNX
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


__all__ = ["check_bundle", "describe_bundle", "io_specs_of"]
