"""`dysink-export check --trt VERSION`: lint a bundle against a TensorRT ONNX parser, on the CPU.

For every node of every graph, If / Loop / Scan bodies included: the operator is in the
parser's published operator matrix, its data input's dtype (or, for Cast / Constant, its
output's) is among the types the matrix lists, and the restrictions we rely on hold (constant
axes, Resize modes, TopK sorted with a constant K below 3840, 2-D / 3-D convolutions); the
model's opset and IR version are in the version's range; graph inputs and outputs have static
shapes (bundles are exported static-shape) and every tensor stays under 2^31 elements; the
custom nodes carry the plugin attributes TensorRT binds `libdysink_plugins.so` by, and the
attributes the plugin creators require, with the creators' own rules (plugins/cpp/src/*_plugin.cpp),
and none of their inputs or outputs is BOOL or UINT8 (TensorRT plugin I/O cannot be).

The custom ops' model-local function bodies are not linted: `dysink-export build` and
`dysink-export trt-onnx` remove them before TensorRT sees the graph. They matter: parsers
before 10.7 import a node whose op name matches a local function as that function, not as
the plugin (onnx-tensorrt ModelImporter); `lint_notes` says so for those versions.

The matrix is data (export/data/trt_onnx_operators.json), parsed from
onnx/onnx-tensorrt's docs/operators.md with `parse_operators_md`; the file names its
source and what each TensorRT version maps to.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DysinkError
from ..graph_files import read_graph
from ..plugins.variants import MAX_TOP_K
from .trt_onnx import PLUGIN_DOMAIN, plugin_functions

DATA = Path(__file__).parent / "data" / "trt_onnx_operators.json"
MAX_ELEMENTS = 2 ** 31
_ONNX_TYPES = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 3: "INT8", 2: "UINT8",
               11: "DOUBLE"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_AXES_INPUT = {"ReduceMean": 1, "ReduceSum": 1, "ReduceL2": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
               "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}
PLUGIN_OPS = {"GatedSinkAttention", "RetrieveSinks"}
# Types no TensorRT plugin input or output may have (NvInferRuntimePlugin.h).
PLUGIN_REFUSED_TYPES = ("BOOL", "UINT8")
# What the plugin creators accept (createPlugin in plugins/cpp/src/gated_sink_attention_plugin.cpp and
# retrieve_sinks_plugin.cpp; tests/export/test_trt_lint.py reads those files for these numbers):
# attribute -> (field kind, lowest, highest). Every one is required; a float must be finite.
MAX_FIXED_SINKS = 64
MAX_SINK_SIZE = 1 << 30
PLUGIN_FIELDS = {
    "GatedSinkAttention": {"threshold": ("float", None, None), "sink_kv_bf16": ("int", 0, 1),
                           "fixed_sinks": ("int", 0, MAX_FIXED_SINKS)},
    "RetrieveSinks": {"sink_size": ("int", 0, MAX_SINK_SIZE), "k": ("int", 1, MAX_TOP_K)},
}
# onnx-tensorrt 10.1-GA docs/operators.md, TopK: "`sorted` must be 1. `K` input must be less than 3840."
TOPK_MAX_K = 3840
# From this version the parser prefers a registered plugin over a model-local function of the same name.
PLUGINS_BEFORE_FUNCTIONS = (10, 7)


def parse_operators_md(text: str) -> dict:
    """The 'Operator Support Matrix' table of onnx-tensorrt's docs/operators.md -> {op: {supported, types}}.
    Restriction prose is not kept; the restrictions this linter checks are its own rules."""
    ops = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", cells[0]) or cells[1][:1] not in "YN":
            continue
        types = [t.strip().upper() for t in cells[2].split(",")] if len(cells) > 2 and cells[2] else []
        types = ["INT64" if t == "INF64" else t for t in types if t]   # the 10.1 table misspells ConstantOfShape's INT64
        ops[cells[0]] = {"supported": cells[1].startswith("Y"), "types": types}
    if not ops:
        raise DysinkError("no operator table found in that operators.md")
    return ops


def load_matrix() -> dict:
    return json.loads(DATA.read_text())


def versions() -> list[str]:
    return list(load_matrix()["versions"])


@dataclass
class Problem:
    graph: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.where}: {self.message}"


def _elements(shape) -> int | None:
    total = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            return None
        total *= d
    return total


def _node_where(node, index) -> str:
    return f"node {node.name or index} ({node.op_type})"


def _graphs(graph, where: str = ""):
    """(graph, prefix for its nodes' `where`) for `graph` and every subgraph (If / Loop / Scan
    bodies, any GRAPH / GRAPHS attribute), depth first."""
    from onnx import AttributeProto

    yield graph, where
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            subs = ([attr.g] if attr.type == AttributeProto.GRAPH else
                    list(attr.graphs) if attr.type == AttributeProto.GRAPHS else [])
            for sub in subs:
                yield from _graphs(sub, f"{where}{_node_where(node, i)} > {attr.name} > ")


def _tensor_value(tensor):
    """A TensorProto's values, or None where they cannot be read here (external data)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(tensor):
        return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:       # noqa: BLE001 - an unreadable constant is one we cannot check, not a crash
        return None


def _constants(model) -> dict:
    """Initializers and Constant outputs of every graph, subgraphs included: name -> numpy value
    (None where it cannot be read here)."""
    import numpy as np
    from onnx import helper

    values: dict = {}
    for graph, _ in _graphs(model.graph):
        for init in graph.initializer:
            values[init.name] = _tensor_value(init)
        for node in graph.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
                continue
            value = None
            for attr in node.attribute:
                if attr.name == "value":
                    value = _tensor_value(attr.t)
                elif attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    value = np.asarray(helper.get_attribute_value(attr))
            values[node.output[0]] = value
    return values


def _attr_type(attr) -> str:
    from onnx import AttributeProto, TensorProto

    name = AttributeProto.AttributeType.Name(attr.type)
    return f"{name} of {TensorProto.DataType.Name(attr.t.data_type)}" if attr.type == AttributeProto.TENSOR else name


def _plugin_field(attr) -> tuple[str, object]:
    """(kind, first value) of a node attribute as TensorRT's parser hands it to a plugin creator
    (onnx-tensorrt loadFields): FLOAT(S) -> a float32 field, INT(S) -> int32, a TENSOR by its
    dtype; the creators read the first value. Kind 'float', 'int' or 'other' (refused by the creators)."""
    from onnx import AttributeProto, TensorProto

    if attr.type == AttributeProto.FLOAT:
        return "float", attr.f
    if attr.type == AttributeProto.FLOATS:
        return "float", attr.floats[0] if attr.floats else None
    if attr.type == AttributeProto.INT:
        return "int", attr.i
    if attr.type == AttributeProto.INTS:
        return "int", attr.ints[0] if attr.ints else None
    if attr.type == AttributeProto.TENSOR:
        kind = {TensorProto.FLOAT: "float", TensorProto.DOUBLE: "float", TensorProto.INT8: "int",
                TensorProto.INT32: "int"}.get(attr.t.data_type)
        values = _tensor_value(attr.t) if kind else None
        return kind or "other", values.ravel()[0].item() if values is not None and values.size else None
    return "other", None


def _plugin_problems(node, types: dict) -> list[str]:
    """What TensorRT or the plugin creator would refuse in a dysink custom node (one message each)."""
    attrs = {a.name: a for a in node.attribute}

    def text(name):
        a = attrs.get(name)
        return a.s if a is not None and a.HasField("s") else None

    msgs = []
    if text("plugin_namespace") != PLUGIN_DOMAIN.encode() or text("plugin_version") != b"1":
        msgs.append(f"custom node without plugin_namespace='{PLUGIN_DOMAIN}' and plugin_version='1': TensorRT would "
                    "not bind the plugin")
    for name, (kind, lo, hi) in PLUGIN_FIELDS[node.op_type].items():
        want = "a float (FLOAT)" if kind == "float" else "an integer (INT)"
        if name not in attrs:
            msgs.append(f"attribute {name} is missing: the {node.op_type} plugin creator refuses the node "
                        f"(it needs {', '.join(PLUGIN_FIELDS[node.op_type])})")
            continue
        got, value = _plugin_field(attrs[name])
        if got != kind:
            msgs.append(f"attribute {name} must be {want}, got {_attr_type(attrs[name])}")
        elif value is None:
            msgs.append(f"attribute {name} is empty")
        elif kind == "float" and not math.isfinite(value):
            msgs.append(f"{name} must be a finite number, got {value}")
        elif kind == "int" and not lo <= value <= hi:
            allowed = f"{lo} or {hi}" if hi - lo == 1 else f"{lo}..{hi}"
            msgs.append(f"{name} must be {allowed}, got {value}")
    for kind, names in (("input", node.input), ("output", node.output)):
        for tensor in names:
            elem = _ONNX_TYPES.get(types.get(tensor))
            if elem in PLUGIN_REFUSED_TYPES:
                msgs.append(f"{kind} {tensor} is {elem}: TensorRT plugins take no BOOL or UINT8 inputs or outputs "
                            "(bundles before format 4 gave RetrieveSinks a bool query_valid); re-export the bundle "
                            "with this version's dysink-export onnx")
    return msgs


def _static_shape_problems(name: str, proto, inferred) -> list[Problem]:
    """Bundles are exported static-shape (graphs.graph_specs), and shape inference sizes every
    tensor of the tiny bundle: a graph input or output without a static shape is an export bug,
    and so is a symbolic dim in the value_info the exporter wrote (one line per symbol). An
    intermediate tensor whose dims shape inference cannot work out (a Reshape to a computed
    shape...) is not flagged: that is a limit of the inference, TensorRT derives it from the
    static inputs; the 2^31 rule skips it."""
    problems = []
    inits = {i.name for i in proto.graph.initializer}
    symbols = set()
    for kind, values in (("input", inferred.graph.input), ("output", inferred.graph.output)):
        for vi in values:
            if vi.name in inits or not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            if not tt.HasField("shape"):
                problems.append(Problem(name, f"{kind} {vi.name}", "no shape: bundles are exported static-shape, "
                                                                   "so this is an export bug"))
                continue
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            symbols |= {d for d in dims if isinstance(d, str)}
            if any(isinstance(d, str) for d in dims):
                problems.append(Problem(name, f"{kind} {vi.name}", f"shape [{', '.join(map(str, dims))}] is not "
                                        "static: bundles are exported static-shape, so this is an export bug"))
    for graph, _ in _graphs(proto.graph):      # as exported: inference names its own unknown dims unk__N
        for vi in graph.value_info:
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param not in symbols:
                    symbols.add(d.dim_param)
                    problems.append(Problem(name, f"tensor {vi.name}", f"symbolic dim {d.dim_param!r}: bundles are "
                                            "exported static-shape, so this is an export bug"))
    return problems


def lint_model(name: str, proto, version: str, matrix: dict | None = None) -> list[Problem]:
    """Problems of one ModelProto for one TensorRT version (empty list: clean)."""
    from onnx import shape_inference

    matrix = matrix or load_matrix()
    if version not in matrix["versions"]:
        raise DysinkError(f"--trt must be one of {', '.join(matrix['versions'])}, got {version!r}")
    ver = matrix["versions"][version]
    ops = matrix["matrices"][ver["matrix"]]
    problems: list[Problem] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    lo, hi = ver["opsets"]
    if opset is None or not lo <= opset <= hi:
        problems.append(Problem(name, "model", f"opset {opset} is outside TensorRT {version}'s {lo}..{hi}; "
                                               f"re-export with --opset {min(hi, 20)}"))
    if proto.ir_version > ver["max_ir_version"]:
        problems.append(Problem(name, "model", f"IR version {proto.ir_version} is newer than TensorRT {version}'s "
                                               f"ONNX ({ver['max_ir_version']}); re-export with --ir-version 9"))
    inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    types: dict[str, int] = {}
    shapes: dict[str, list] = {}
    for graph, _ in _graphs(inferred.graph):
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            tt = vi.type.tensor_type
            types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        for init in graph.initializer:
            types[init.name] = init.data_type
            shapes[init.name] = list(init.dims)
    problems += _static_shape_problems(name, proto, inferred)
    for tensor, shape in shapes.items():
        n = _elements(shape)
        if n is not None and n >= MAX_ELEMENTS:
            problems.append(Problem(name, f"tensor {tensor}", f"{n} elements: at or above 2^31, which many TensorRT "
                                                              "layers cannot index"))
    consts = _constants(proto)
    for graph, prefix in _graphs(proto.graph):
        for i, node in enumerate(graph.node):
            where = prefix + _node_where(node, i)
            problems += [Problem(name, where, m) for m in _node_problems(node, version, ops, opset, types, consts)]
    return problems


def _node_problems(node, version: str, ops: dict, opset: int | None, types: dict, consts: dict) -> list[str]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.domain not in ("", "ai.onnx"):
        if node.domain == PLUGIN_DOMAIN and node.op_type in PLUGIN_OPS:
            return _plugin_problems(node, types)
        return [f"op domain {node.domain!r} has no TensorRT importer or plugin"]
    entry = ops.get(node.op_type)
    if entry is None or not entry["supported"]:
        return [f"{node.op_type} is not supported by TensorRT {version}'s parser"]
    msgs = []
    if node.op_type == "Cast":
        elem = attrs.get("to")
    elif node.op_type in ("Constant", "ConstantOfShape", "Shape", "Range"):
        elem = types.get(node.output[0])
    else:
        elem = types.get(node.input[0]) if node.input and node.input[0] else None
    tname = _ONNX_TYPES.get(elem, f"onnx type {elem}") if elem is not None else None
    if tname and entry["types"] and tname not in entry["types"]:
        msgs.append(f"{tname} input; TensorRT {version} supports {', '.join(entry['types'])}")
    axes_at = _AXES_INPUT.get(node.op_type)
    if axes_at is not None and len(node.input) > axes_at and node.input[axes_at] \
            and node.input[axes_at] not in consts:
        msgs.append("axes must be an initializer or constant")
    if node.op_type == "Resize":
        mode = attrs.get("mode", b"nearest").decode()
        coord = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in _RESIZE_MODES or coord not in _RESIZE_COORDS or attrs.get("antialias", 0):
            msgs.append(f"Resize mode {mode} / {coord} is not supported")
    if node.op_type == "TopK":
        msgs += _topk_problems(node, attrs, opset, consts)
    if node.op_type in ("Conv", "ConvTranspose"):
        kernel = attrs.get("kernel_shape")
        if kernel is not None and len(kernel) not in (2, 3):
            msgs.append(f"{len(kernel)}-D convolution: TensorRT supports 2-D and 3-D")
    return msgs


def _topk_problems(node, attrs: dict, opset: int | None, consts: dict) -> list[str]:
    msgs = []
    if attrs.get("sorted", 1) != 1:
        msgs.append("TopK must be sorted")
    if opset is not None and opset < 10:
        k = attrs.get("k")
    else:
        k_input = node.input[1] if len(node.input) > 1 else ""
        if k_input not in consts:
            return msgs + [f"TopK's K must be an initializer or constant (TensorRT needs K < {TOPK_MAX_K}; "
                           "the bundles are static-shape)"]
        value = consts[k_input]
        k = int(value.ravel()[0]) if value is not None and value.size else None
    if k is not None and k >= TOPK_MAX_K:
        msgs.append(f"TopK's K is {k}: TensorRT needs K < {TOPK_MAX_K}")
    return msgs


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def lint_notes(name_functions: dict[str, list[str]], version: str, bundle_path) -> list[str]:
    """Informational lines (not problems) for one TensorRT version: before 10.7 the parser imports a
    node whose op name matches a model-local function as that function, so the bundle's function
    bodies would replace the plugins in a graph parsed as it is."""
    found = {g: f for g, f in name_functions.items() if f}
    if not found or _version_tuple(version) >= PLUGINS_BEFORE_FUNCTIONS:
        return []
    what = "; ".join(f"{g}: {', '.join(f)}" for g, f in found.items())
    return [f"this parser (before 10.7) imports a node whose op name matches a model-local function as that "
            f"function: the bundle's function bodies ({what}) would be imported instead of the plugins. "
            f"dysink-export build removes them before parsing; for trtexec / polygraphy, "
            f"dysink-export trt-onnx --bundle {bundle_path} --out DIR writes function-free copies"]


def lint_bundle_report(bundle, version: str) -> tuple[list[Problem], list[str]]:
    """(problems, informational notes) of every graph of `bundle` for one TensorRT version."""
    matrix = load_matrix()
    problems: list[Problem] = []
    functions: dict[str, list[str]] = {}
    for name in bundle.graphs:
        proto = read_graph(bundle, name)      # one line for a truncated file; I/O = the contract
        problems += lint_model(name, proto, version, matrix)
        functions[name] = plugin_functions(proto)
    return problems, lint_notes(functions, version, bundle.path)


def lint_bundle(bundle, version: str) -> list[Problem]:
    return lint_bundle_report(bundle, version)[0]
