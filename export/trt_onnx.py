"""Function-free ONNX for TensorRT: the bundle's graphs without their `dysink` model-local functions.

A bundle's custom nodes (`dysink::GatedSinkAttention`, `dysink::RetrieveSinks`) carry the
plugin attributes TensorRT binds `libdysink_plugins.so` by, and the same ops also exist as
model-local ONNX functions (their bodies in standard ops, for ONNX Runtime). TensorRT's ONNX
parser up to 10.6 imports a node whose op name matches a local function *as that function*
(onnx-tensorrt ModelImporter: built-in importer, then local function, then plugin); from 10.7
it prefers a registered plugin but still falls back to the body, silently, when the plugin
library is not loaded. Either way an engine built from the bodies never calls the plugins.
So everything that hands a bundle graph to TensorRT parses a copy without those functions:

- `function_free_bytes(path)`: the serialized copy, for `OnnxParser.parse(bytes, path=...)`
  (`dysink-export build`); external weights stay referenced relative to the original file;
- `write_trt_onnx(...)` (`dysink-export trt-onnx`): function-free files on disk for trtexec and
  polygraphy, the external data files they reference beside them under the same relative names
  (TensorRT resolves them relative to the .onnx file and refuses `../`).

External data is placed as symbolic links to the bundle's files (or copies, `copy_data`), not
hard links: the `onnx` package (1.23 here) refuses to load external data whose file has more
than one hard link ("potential hardlink attack"), so a hard link would break `onnx.load` and the
checker on the bundle's own graphs (`dysink-export inspect`) for as long as the copy exists. It
refuses symbolic links too, but only in the copy, which is meant for TensorRT's parser (which
follows them); `--copy-data` makes a directory the `onnx` package loads.

Torch-free and TensorRT-free (onnx only).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import manifest_owned, staged_directory
from ..bundle import MANIFEST_NAME, Bundle, confined_file, sha256_file
from ..errors import DysinkError
from ..graph_files import read_graph, read_onnx

# = dysink_deploy.ops.gated_sink_attention.ONNX_DOMAIN (that module imports torch; a test compares them)
PLUGIN_DOMAIN = "dysink"
MARKER = "dysink_trt_onnx.json"
_REEXPORT = "re-export the bundle (dysink-export onnx ... --overwrite)"


def strip_plugin_functions(model):
    """A copy of `model` (an onnx.ModelProto) without its model-local functions of the plugin
    domain; nodes, their attributes, opset imports, other functions and external data
    references are unchanged."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if f.domain != PLUGIN_DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def plugin_functions(model) -> list[str]:
    """'dysink::Op' for each model-local function of the plugin domain."""
    return [f"{f.domain}::{f.name}" for f in model.functions if f.domain == PLUGIN_DOMAIN]


def function_free_bytes(graph_path: str | os.PathLike) -> bytes:
    """The serialized graph at `graph_path` without its plugin-domain functions, its weights left
    where they are (external data is not loaded: pass `path=graph_path` to the parser so they
    resolve relative to the original file)."""
    model = read_onnx(graph_path, f"graph {Path(graph_path).stem}", _REEXPORT)
    return strip_plugin_functions(model).SerializeToString()


def native_bytes(graph_path: str | os.PathLike) -> bytes:
    """The serialized graph at `graph_path` with every dysink node replaced by its function body
    (standard ONNX ops only: no plugin is needed, and every TensorRT parser imports it alike), its
    weights left where they are (pass `path=graph_path` to the parser). For `build --no-plugins`."""
    from onnx import inliner   # lazy: onnx

    model = read_onnx(graph_path, f"graph {Path(graph_path).stem}", _REEXPORT)
    names = [(f.domain, f.name) for f in model.functions if f.domain == PLUGIN_DOMAIN]
    inlined = strip_plugin_functions(inliner.inline_selected_functions(model, names))
    left = [n.op_type for n in inlined.graph.node if n.domain == PLUGIN_DOMAIN]
    if left:
        raise DysinkError(f"{graph_path}: dysink node(s) {', '.join(sorted(set(left)))} have no function body to "
                          "inline; re-export the bundle (dysink-export onnx)")
    return inlined.SerializeToString()


def _graph_tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def external_data_locations(model) -> list[str]:
    """The external data files `model` references (as written in the file: relative paths)."""
    from onnx.external_data_helper import uses_external_data

    tensors = list(_graph_tensors(model.graph))
    tensors += [t for f in model.functions for n in f.node for t in _node_tensors(n)]
    locations = set()
    for t in tensors:
        if uses_external_data(t):
            locations.update(e.value for e in t.external_data if e.key == "location")
    return sorted(locations)


@dataclass
class WrittenGraph:
    name: str
    file: Path
    removed: list[str] = field(default_factory=list)
    external_data: list[str] = field(default_factory=list)
    placed: dict[str, str] = field(default_factory=dict)      # external data file -> 'linked' / 'copied'


def _place(src: Path, dst: Path, copy: bool) -> str:
    """`dst` as a symbolic link to `src` (absolute), or a copy where asked or where the file system
    has no links; returns 'linked' / 'copied'."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.symlink(src.resolve(), dst)
            return "linked"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copied"


def _marker_files(marker: dict):
    """The graph files and external data a trt-onnx marker lists: what --overwrite may replace."""
    graphs = marker.get("graphs")
    for entry in graphs.values() if isinstance(graphs, dict) else ():
        if isinstance(entry, dict):
            yield entry.get("file")
            data = entry.get("external_data")
            yield from data if isinstance(data, dict) else ()


TRT_ONNX_OWNED = manifest_owned(MARKER, _marker_files, "a dysink-export trt-onnx folder")


def _check_out(out: Path, bundle_dir: Path, overwrite: bool) -> None:
    resolved, home = out.resolve(), bundle_dir.resolve()
    if resolved == home or resolved in home.parents:
        raise DysinkError(f"--out {out} is the bundle or a folder above it; choose another --out")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise DysinkError(f"--out {out} already exists; pass --overwrite or choose another --out")
        if out.is_symlink() or not out.is_dir() or not (out / MARKER).is_file():
            raise DysinkError(f"--out {out} was not written by dysink-export trt-onnx (no {MARKER}); --overwrite "
                              "replaces only those, nothing was touched: choose another --out")


def write_trt_onnx(bundle_path: str | os.PathLike, out: str | os.PathLike, graphs: list[str] | None = None,
                   overwrite: bool = False, copy_data: bool = False) -> list[WrittenGraph]:
    """Function-free copies of a bundle's graphs in `out` (created whole or not at all): each
    graph file without its plugin-domain functions, the external data files it references under
    the same relative names (symbolic links to the bundle's, or copies: `copy_data`, or where the
    file system has no symbolic links), and `MARKER`."""
    bundle = Bundle.load(bundle_path)
    names = list(graphs) if graphs else list(bundle.graphs)
    unknown = [g for g in names if g not in bundle.graphs]
    if unknown:
        raise DysinkError(f"--graph {', '.join(unknown)}: not in bundle {bundle.path} ({', '.join(bundle.graphs)})")
    out = Path(out)
    _check_out(out, bundle.path, overwrite)
    written: list[WrittenGraph] = []
    with staged_directory(out, TRT_ONNX_OWNED, "dysink-export trt-onnx") as tmp:
        placed: dict[str, str] = {}
        for name in names:
            src = bundle.graph_path(name)
            model = read_graph(bundle, name)           # one line for a truncated file; I/O = the contract
            entry = WrittenGraph(name, out / src.name, plugin_functions(model), external_data_locations(model))
            for loc in entry.external_data:
                data = confined_file(bundle.path, loc, f"external data of graph {name}", bundle.rebuild_command())
                if data is None:
                    raise DysinkError(f"graph {name} references external data {loc!r}, which is not in bundle "
                                      f"{bundle.path}; rebuild it: {bundle.rebuild_command()}")
                if loc not in placed:
                    placed[loc] = _place(data, tmp / loc, copy_data)
                entry.placed[loc] = placed[loc]
            (tmp / src.name).write_bytes(strip_plugin_functions(model).SerializeToString())
            written.append(entry)
        (tmp / MARKER).write_text(json.dumps({
            "bundle": str(bundle.path.resolve()),
            "bundle_manifest_sha256": sha256_file(bundle.path / MANIFEST_NAME),
            "graphs": {g.name: {"file": g.file.name, "removed_functions": g.removed,
                                "external_data": g.placed} for g in written},
            "why": "TensorRT's ONNX parser imports a node as a model-local function of the same name instead of "
                   "the plugin (always before 10.7; from 10.7 when the plugin is not loaded): these copies have "
                   "no dysink functions, so the plugins are used."}, indent=1) + "\n")
    return written


def trtexec_command(onnx_file: Path, plugin_library: Path) -> str:
    """The trtexec line that builds an engine the way `dysink-export build` does (strongly typed,
    the plugin library loaded)."""
    engine = onnx_file.with_suffix(".engine")
    return shlex.join(["trtexec", f"--onnx={onnx_file}", f"--dynamicPlugins={plugin_library}", "--stronglyTyped",
                       f"--saveEngine={engine}"])


def polygraphy_command(onnx_file: Path, plugin_library: Path) -> str:
    """The polygraphy line that shows the TensorRT network of a graph (its plugin layers included)."""
    return shlex.join(["polygraphy", "inspect", "model", str(onnx_file), "--display-as=trt", "--show", "layers",
                       "--strongly-typed", "--plugins", str(plugin_library)])
