"""`dysink-export build`: a bundle's ONNX graphs -> TensorRT engines, beside them, in the manifest.

Strongly typed networks (precision comes from the ONNX graph; no fp16/int8 builder
flags, TensorRT 11 has none), the plugin library loaded into the builder's registry,
engines written atomically, one manifest entry per engine: TensorRT version, compute
capability, plugin library file + sha256, engine sha256 and bytes, build options.

Each graph is parsed without its `dysink` model-local functions (`trt_onnx.function_free_bytes`):
TensorRT's parser would otherwise import the custom nodes as those reference bodies (before
10.7 always, later when a plugin is missing) and the engine would never call the plugins.
`--no-plugins` (`native=True`) does the opposite on purpose: every dysink node is replaced by its
function body (`trt_onnx.native_bytes`, standard layers that every TensorRT version parses), so a
user whose plugin library fails still gets engines (slower: no paged attention kernel, the K/V
pool is read through gathers), as TensorRT-LLM's plugin call sites fall back to native layers.

The plugin library the engines use is kept inside the bundle (`plugins/libdysink_plugins.so`,
copied there when `--plugins` names one elsewhere) and recorded relative to it, so the bundle
works from any directory and after `--out`.

Uses the TensorRT Python API directly (10.3 .. 11.x; every name it uses is checked
against both versions' bindings, tests/export/test_trt_build.py). Not run on the
development machines (no TensorRT, no GPU): see the README's support table.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..bundle import MANIFEST_NAME, Bundle, sha256_file
from ..errors import DysinkError
from ..runtime.backends.engine_checks import NO_TENSORRT, check_engine_entry, compute_capability  # noqa: F401
from ..runtime.backends.plugin_library import BUNDLE_PLUGIN_PATH, PLUGIN_LIBRARY, load_plugin_library
from ..runtime.backends.tensorrt_ops import page_type_refusal
from .trt_onnx import function_free_bytes, native_bytes

ENGINE_SUFFIX = ".engine"


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DysinkError(NO_TENSORRT) from None
    return trt


def check_build_options(workspace_gb: float | None, opt_level: int | None, hardware_compat: bool = False,
                        native: bool = False, plugins: str | None = None) -> None:
    if hardware_compat and not native:
        raise DysinkError("--hardware-compat needs --no-plugins: the plugin library's kernels are compiled per GPU "
                          "architecture (dysink-export plugins --arch), so an engine that calls them runs only where "
                          "they were compiled for; native engines may use it")
    if native and plugins:
        raise DysinkError("--plugins and --no-plugins exclude each other: drop one")
    if workspace_gb is not None and not workspace_gb > 0:
        raise DysinkError(f"--workspace must be > 0 GB, got {workspace_gb}")
    if opt_level is not None and not 0 <= opt_level <= 5:
        raise DysinkError(f"--opt-level must lie in 0..5 (TensorRT's builder optimization level), got {opt_level}")


def find_plugin_library(bundle: Bundle, explicit: str | None) -> Path:
    path = Path(explicit) if explicit else bundle.path / "plugins" / PLUGIN_LIBRARY
    if not path.is_file():
        raise DysinkError(f"no plugin library at {path}; build it with: dysink-export plugins --bundle {bundle.path} "
                          f"--arch <this GPU, e.g. 87> --out {bundle.path / 'plugins'} (or pass --plugins FILE)")
    return path


def record_engines(bundle_dir: Path, entries: dict[str, dict]) -> None:
    """Add engine entries to bundle.json (atomically): file, sha256, bytes + the build record."""
    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    engines = manifest.setdefault("engines", {})
    for graph, info in entries.items():
        if graph not in manifest["graphs"]:
            raise DysinkError(f"bundle {bundle_dir} has no graph {graph!r} to attach an engine to")
        engines[graph] = {"file": info["file"], "sha256": sha256_file(bundle_dir / info["file"]),
                          "bytes": (bundle_dir / info["file"]).stat().st_size,
                          **{k: v for k, v in info.items() if k != "file"}}
    tmp = manifest_path.with_name(f".{MANIFEST_NAME}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)


def _copy_bundle(src: Path, dst: Path, copy_names: set[str] = frozenset()) -> None:
    """--out: a new bundle directory holding the ONNX files (hard links where possible) and the manifest.
    `copy_names` (the external data files) are copied: the onnx package refuses to load external data
    whose file has several hard links, which would break both bundles' graphs for it."""
    if dst.exists():
        raise DysinkError(f"--out {dst} already exists; choose another directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        for item in src.iterdir():
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            elif item.name in copy_names:
                shutil.copy2(item, target)
            else:
                try:
                    os.link(item, target)
                except OSError:
                    shutil.copy2(item, target)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _bundle_plugin_library(src: Path, target: Path) -> tuple[str, str]:
    """Put the plugin library at plugins/libdysink_plugins.so inside `target` (copied atomically unless
    it is that file already) -> (its path relative to the bundle, sha256)."""
    dest = target / BUNDLE_PLUGIN_PATH
    if not (dest.exists() and os.path.samefile(src, dest)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        shutil.copy2(src, tmp)
        tmp.replace(dest)
    return BUNDLE_PLUGIN_PATH, sha256_file(dest)


def build_engines(bundle_path: str, out: str | None = None, graphs: list[str] | None = None,
                  workspace_gb: float | None = None, opt_level: int | None = None,
                  timing_cache: str | None = None, hardware_compat: bool = False, plugins: str | None = None,
                  native: bool = False, log: Callable[[str], None] = lambda m: None) -> Path:
    check_build_options(workspace_gb, opt_level, hardware_compat, native, plugins)
    bundle = Bundle.load(bundle_path)
    names = graphs or list(bundle.graphs)
    # int8 / fp8 pages: dit_step's GatedSinkAttentionQ8 nodes bind the plugin of that name (its library built
    # with dysink-export plugins --kv-cache-dtype); the pools' int8 / float8e4m3fn types stand in the strongly
    # typed network. Never built on TensorRT here (no TensorRT, no GPU on the development machines).
    if "dit_step" in names and (refusal := page_type_refusal(bundle)) is not None:
        raise DysinkError(refusal)
    unknown = [g for g in names if g not in bundle.graphs]
    if unknown:
        raise DysinkError(f"--graph {', '.join(unknown)}: not in bundle {bundle.path} ({', '.join(bundle.graphs)})")
    trt = import_tensorrt()
    plugin_lib = None if native else find_plugin_library(bundle, plugins)
    cc = compute_capability()
    if "dit_step" in names and (refusal := page_type_refusal(bundle, cc)) is not None:
        raise DysinkError(refusal)
    target = Path(out) if out else bundle.path
    if out:
        _copy_bundle(bundle.path, target, {d["file"] for g in bundle.graphs.values() for d in g.external_data})
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    library_record = None
    if plugin_lib is not None:
        rel, digest = _bundle_plugin_library(plugin_lib, target)
        load_plugin_library(builder.get_plugin_registry(), target / rel)
        library_record = {"file": rel, "sha256": digest}
    options = {"workspace_gb": workspace_gb, "opt_level": opt_level, "hardware_compat": bool(hardware_compat),
               "strongly_typed": True, "timing_cache": bool(timing_cache), "plugins": not native}
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    entries = {}
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        graph_path = bundle.graph_path(name)
        how = "its dysink nodes as their function bodies (--no-plugins)" if native else "without its dysink local functions"
        log(f"[{i}/{len(names)}] {name}: parsing {graph_path.name} ({how})")
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        # Not parse_from_file: the parser would import the custom nodes as their function bodies
        # (see trt_onnx). `path` resolves external weights relative to the original file.
        blob = native_bytes(graph_path) if native else function_free_bytes(graph_path)
        if not parser.parse(blob, path=str(graph_path)):
            first = parser.get_error(0).desc() if getattr(parser, "num_errors", 1) else "no error reported"
            raise DysinkError(f"TensorRT's parser refused graph {name}: {first}")
        config = builder.create_builder_config()
        if workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2 ** 30))
        if opt_level is not None:
            config.builder_optimization_level = int(opt_level)
        if hardware_compat:
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        log(f"[{i}/{len(names)}] {name}: building (minutes for the large graphs)")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DysinkError(f"TensorRT could not build graph {name} (see the builder's messages above)")
        cache_bytes = bytes(memoryview(config.get_timing_cache().serialize()))
        engine_file = f"{name}{ENGINE_SUFFIX}"
        tmp = target / f".{engine_file}.partial-{os.getpid()}"
        tmp.write_bytes(memoryview(serialized))
        tmp.replace(target / engine_file)
        entries[name] = {"file": engine_file, "tensorrt_version": trt.__version__, "compute_capability": cc,
                         "plugin_library": library_record,
                         "build_options": options}
        log(f"[{i}/{len(names)}] {name}: {engine_file} ({time.perf_counter() - t0:.0f}s)")
    if timing_cache:
        tmp = Path(timing_cache).with_name(f".{Path(timing_cache).name}.partial-{os.getpid()}")
        tmp.write_bytes(cache_bytes)
        tmp.replace(timing_cache)
    record_engines(target, entries)
    return target
