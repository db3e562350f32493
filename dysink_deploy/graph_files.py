"""A bundle's graph files as they are on disk: read them with one-line errors, and check their
inputs and outputs against the manifest's I/O contract before anything binds them.

`Bundle.load` checks the manifest (its recorded I/O specs equal this version's `graph_specs`) and
the files' sizes and sha256; it does not open the graphs. A graph file replaced together with its
checksum (tampered, or rewritten by another tool) still has to match the contract the runtime
binds: the same input and output names, dtypes and static shapes. `check_graph_io` compares what a
loaded graph declares (an ONNX Runtime session: `session_io`; an ONNX ModelProto: `proto_io`) with
`bundle.specs[name]` and names the first difference in one line; `read_graph` loads a ModelProto
(a truncated or non-ONNX file is one line, not a protobuf traceback) and checks it.

Torch-free; onnx is imported inside the functions that parse files.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from .bundle import Bundle
from .errors import DysinkError
from .graphs import GraphSpec

# (name, shape, dtype): a dim that is not a static integer is kept as the file gives it (a name or None).
Declared = tuple[str, tuple, str]


def _dtype_name(onnx_name: str) -> str:
    """'float' / 'FLOAT' (ONNX's names) -> the contract's 'float32'; the others lower-cased as they are
    (float16, bfloat16, int64, int32, bool, int8, float8e4m3fn, ...)."""
    name = onnx_name.lower()
    return {"float": "float32", "double": "float64"}.get(name, name)


def session_io(session) -> tuple[list[Declared], list[Declared]]:
    """What an onnxruntime.InferenceSession declares: [(name, shape, dtype)] of inputs and outputs."""
    def one(arg) -> Declared:
        kind = str(arg.type)
        dtype = _dtype_name(kind[len("tensor("):-1]) if kind.startswith("tensor(") else kind
        return arg.name, tuple(arg.shape or ()), dtype
    return [one(a) for a in session.get_inputs()], [one(a) for a in session.get_outputs()]


def proto_io(model_proto) -> tuple[list[Declared], list[Declared]]:
    """What an onnx.ModelProto's graph declares: [(name, shape, dtype)] of inputs and outputs."""
    import onnx  # lazy: onnx

    def one(v) -> Declared:
        tt = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        try:
            dtype = _dtype_name(onnx.TensorProto.DataType.Name(tt.elem_type))
        except ValueError:
            dtype = f"onnx type {tt.elem_type}"
        return v.name, shape, dtype
    initializers = {t.name for t in model_proto.graph.initializer}   # IR < 4 lists weights as inputs too
    return ([one(v) for v in model_proto.graph.input if v.name not in initializers],
            [one(v) for v in model_proto.graph.output])


def _shape_text(shape: Iterable) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and not isinstance(d, bool) else "?" if d is None else str(d)
                           for d in shape) + "]"


def io_difference(spec: GraphSpec, inputs: Sequence[Declared], outputs: Sequence[Declared],
                  fp32_io: bool = False) -> str | None:
    """The first way `inputs` / `outputs` differ from `spec` (a phrase naming the tensor), or None.
    `fp32_io`: the float32 twin of a bf16 graph (export/check.py), where the contract's bfloat16
    tensors are float32."""
    for kind, got, want in (("input", inputs, spec.inputs), ("output", outputs, spec.outputs)):
        declared = {name: (tuple(shape), dtype) for name, shape, dtype in got}
        names = [t.name for t in want]
        missing = [n for n in names if n not in declared]
        extra = [name for name, _, _ in got if name not in names]
        if len(missing) == 1 and len(extra) == 1:
            return f"{kind} {missing[0]!r} is named {extra[0]!r} in the file"
        if extra:
            return f"it has {kind}{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} that the contract does not list"
        if missing:
            return f"it lacks {kind}{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        for t in want:
            shape, dtype = declared[t.name]
            wanted = "float32" if fp32_io and t.dtype == "bfloat16" else t.dtype
            if dtype != wanted:
                return f"{kind} {t.name!r} is {dtype}, the contract says {wanted}"
            if len(shape) != len(t.shape) or any(not isinstance(a, int) or isinstance(a, bool) or a != b
                                                 for a, b in zip(shape, t.shape)):
                return f"{kind} {t.name!r} has shape {_shape_text(shape)}, the contract says {_shape_text(t.shape)}"
    return None


def check_graph_io(bundle: Bundle, name: str, inputs: Sequence[Declared], outputs: Sequence[Declared],
                   fp32_io: bool = False) -> None:
    """Refuse (one line: the graph, the tensor, what differs, re-export) a graph whose declared I/O is
    not the manifest's contract for it."""
    problem = io_difference(bundle.specs[name], inputs, outputs, fp32_io)
    if problem:
        raise DysinkError(f"bundle {bundle.path}: graph {name} ({bundle.graphs[name].file}) does not match the "
                          f"manifest's I/O contract: {problem}; the file was changed after export: re-export the "
                          f"bundle: {bundle.rebuild_command()}")


def read_onnx(path: str | os.PathLike, what: str, hint: str, load_external_data: bool = False):
    """onnx.load(path), with a file that is not a complete ONNX model (truncated, another format,
    unreadable) as one DysinkError line: `what` names it, `hint` says what to do."""
    import onnx  # lazy: onnx

    try:
        return onnx.load(os.fspath(path), load_external_data=load_external_data)
    except OSError as exc:
        raise DysinkError(f"{what}: cannot read {path} ({exc.strerror or exc}); {hint}") from None
    except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError, onnx's ValidationError, RuntimeWarning...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DysinkError(f"{what}: {path} is not a complete ONNX model ({type(exc).__name__}: {first}; truncated "
                          f"or another format?); {hint}") from None


def read_graph(bundle: Bundle, name: str, load_external_data: bool = False, check_io: bool = True):
    """Graph `name` of `bundle` as an onnx.ModelProto (external weights left on disk unless
    `load_external_data`), its I/O checked against the contract (`check_io`)."""
    proto = read_onnx(bundle.graph_path(name), f"bundle {bundle.path}: graph {name}",
                      f"re-export the bundle: {bundle.rebuild_command()}", load_external_data)
    if check_io:
        check_graph_io(bundle, name, *proto_io(proto))
    return proto


__all__ = ["check_graph_io", "io_difference", "proto_io", "read_graph", "read_onnx", "session_io"]
