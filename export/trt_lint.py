"""`dysink-export check --trt VERSION`: lint a bundle against a TensorRT ONNX parser, on the CPU.

For every node of every graph: the operator is in the parser's published operator
matrix, its data input's dtype (or, for Cast / Constant, its output's) is among the
types the matrix lists, and the restrictions we rely on hold (constant axes, Resize
modes, TopK sorted and K < 3840, 2-D / 3-D convolutions); the model's opset and IR
version are in the version's range; every tensor stays under 2^31 elements; the
custom nodes carry the plugin attributes TensorRT binds `libdysink_plugins.so` by
(their function bodies are not parsed by TensorRT, so they are not linted).

The matrix is data (export/data/trt_onnx_operators.json), parsed from
onnx/onnx-tensorrt's docs/operators.md with `parse_operators_md`; the file names its
source and what each TensorRT version maps to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DysinkError

DATA = Path(__file__).parent / "data" / "trt_onnx_operators.json"
MAX_ELEMENTS = 2 ** 31
_ONNX_TYPES = {1: "FP32", 10: "FP16", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL", 3: "INT8", 2: "UINT8",
               11: "DOUBLE"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_AXES_INPUT = {"ReduceMean": 1, "ReduceSum": 1, "ReduceL2": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
               "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}
PLUGIN_OPS = {"GatedSinkAttention", "RetrieveSinks"}


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


def _const_names(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _elements(shape) -> int | None:
    total = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            return None
        total *= d
    return total


def lint_model(name: str, proto, version: str, matrix: dict | None = None) -> list[Problem]:
    """Problems of one ModelProto for one TensorRT version (empty list: clean)."""
    import onnx
    from onnx import helper, shape_inference

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
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        types[vi.name] = tt.elem_type
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = list(init.dims)
    for tensor, shape in shapes.items():
        n = _elements(shape)
        if n is not None and n >= MAX_ELEMENTS:
            problems.append(Problem(name, f"tensor {tensor}", f"{n} elements: at or above 2^31, which many TensorRT "
                                                              "layers cannot index"))
    consts = _const_names(proto.graph)
    for i, node in enumerate(proto.graph.node):
        where = f"node {node.name or i} ({node.op_type})"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            if node.domain == "dysink" and node.op_type in PLUGIN_OPS:
                if attrs.get("plugin_namespace") != b"dysink" or attrs.get("plugin_version") != b"1":
                    problems.append(Problem(name, where, "custom node without plugin_namespace='dysink' and "
                                                         "plugin_version='1': TensorRT would not bind the plugin"))
            else:
                problems.append(Problem(name, where, f"op domain {node.domain!r} has no TensorRT importer or plugin"))
            continue
        entry = ops.get(node.op_type)
        if entry is None or not entry["supported"]:
            problems.append(Problem(name, where, f"{node.op_type} is not supported by TensorRT {version}'s parser"))
            continue
        if node.op_type == "Cast":
            elem = attrs.get("to")
        elif node.op_type in ("Constant", "ConstantOfShape", "Shape", "Range"):
            elem = types.get(node.output[0])
        else:
            elem = types.get(node.input[0]) if node.input and node.input[0] else None
        tname = _ONNX_TYPES.get(elem, f"onnx type {elem}") if elem is not None else None
        if tname and entry["types"] and tname not in entry["types"]:
            problems.append(Problem(name, where, f"{tname} input; TensorRT {version} supports "
                                                 f"{', '.join(entry['types'])}"))
        axes_at = _AXES_INPUT.get(node.op_type)
        if axes_at is not None and len(node.input) > axes_at and node.input[axes_at] \
                and node.input[axes_at] not in consts:
            problems.append(Problem(name, where, "axes must be an initializer or constant"))
        if node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest").decode()
            coord = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in _RESIZE_MODES or coord not in _RESIZE_COORDS or attrs.get("antialias", 0):
                problems.append(Problem(name, where, f"Resize mode {mode} / {coord} is not supported"))
        if node.op_type == "TopK":
            if attrs.get("sorted", 1) != 1:
                problems.append(Problem(name, where, "TopK must be sorted"))
        if node.op_type in ("Conv", "ConvTranspose"):
            kernel = attrs.get("kernel_shape")
            if kernel is not None and len(kernel) not in (2, 3):
                problems.append(Problem(name, where, f"{len(kernel)}-D convolution: TensorRT supports 2-D and 3-D"))
    del onnx
    return problems


def lint_bundle(bundle, version: str) -> list[Problem]:
    import onnx

    matrix = load_matrix()
    problems = []
    for name in bundle.graphs:
        proto = onnx.load(str(bundle.graph_path(name)), load_external_data=False)
        problems += lint_model(name, proto, version, matrix)
    return problems
