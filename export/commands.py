"""Click commands of `dysink-export` for ONNX bundles: `onnx`, `inspect`, `plan`, `build`, `trt-onnx`.

Thin: they parse flags and call `onnx_export.export_onnx`, `inspect_bundle.check_bundle` /
`describe_bundle`, `runtime.plan`, `trt_build.build_engines` and `trt_onnx.write_trt_onnx`.
Stream flags are generated from `bundle.GRAPH_STREAM_FIELDS` and default to
the preset's released stream (StreamConfig is the single source of defaults).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path

import click
import psutil

from ..bundle import GRAPH_STREAM_FIELDS
from ..graphs import VAE_LAYOUTS
from ..config import FEATURE_MODES, StreamConfig, model_preset
from ..graphs import PRECISIONS
from ..cli.common import (HELP, checkpoint_file_options, model_config_option, preset_default_text, resolve_model,
                          shared, switch_default, spec_option)
from ..cli.prompt_cmd import text_encoder_options
from ..errors import DysinkError
from ..runtime.plan import (FP8_NOTE, GB, Q8_BACKENDS_NOTE, JETSON_PRECISION_NOTE, PLATFORMS, check_export, check_fits, export_line,
                             flags, format_options, format_plan, parse_memory, plan, search)
from ..runtime.spec import BANK_PLACEMENTS, KV_CACHE_DTYPES, spec_default
from .inspect_bundle import check_bundle, describe_bundle
from .trt_build import PLUGIN_LIBRARY, build_engines
from .trt_onnx import polygraphy_command, trtexec_command, write_trt_onnx


def _stream_options(fn):
    """The stream settings baked into graphs, as flags (names and help as dysink-run's)."""
    types = {f.name: f.type for f in dataclasses.fields(StreamConfig)}
    for name in reversed(GRAPH_STREAM_FIELDS):
        flag = "--" + name.replace("_", "-")
        default = getattr(StreamConfig(), name)
        text = preset_default_text(name) if name in ("height", "width") else str(default)
        if isinstance(default, bool):
            opt = shared(f"{flag}/--no-{flag[2:]}", name, default=None, default_text=switch_default(flag, default))
        elif name == "feature_mode":
            opt = shared(flag, name, type=click.Choice(FEATURE_MODES), default=None, default_text=text)
        elif flag in HELP:
            kind = float if isinstance(default, float) or types[name] in (float, "float") else int
            opt = shared(flag, name, type=kind, default=None, default_text=text)
        else:
            kind = float if isinstance(default, float) or types[name] in (float, "float") else int
            opt = click.option(flag, name, type=kind, default=None,
                               help=f"Stream setting {name}. [default: {text}]")
        fn = opt(fn)
    return fn


@click.command("onnx")
@shared("--model", "model_name", default=None, note="Or --model-config.")
@model_config_option
@checkpoint_file_options
@shared("--use-ema", "ema", is_flag=True)
@shared("--precision", type=click.Choice(PRECISIONS), default=spec_default("precision"))
@click.option("--out", type=click.Path(), required=True, help="Bundle directory to create.")
@shared("--overwrite", is_flag=True, note="A bundle is replaced only once the new one is complete.")
@shared("--graph", "graphs", multiple=True)
@shared("--weights-seed", "seed", type=int, default=0)
@click.option("--opset", type=int, default=None,
              help="ONNX opset of graphs and function bodies, 18..23 (20 is what TensorRT 10.x parsers accept; "
                   "bf16 Conv needs 22; TensorRT 11.x accepts up to 25). [default: 20; 22 for bf16]")
@click.option("--ir-version", type=int, default=None,
              help="ONNX IR version. [default: 9 with opset 20, else the opset's minimum]")
@click.option("--encoder-frames", "encoder_frames", type=int, multiple=True,
              help="Also export memory_encoder_tN for N frames (PE-Core on clips of that length; repeatable).")
@text_encoder_options
@click.option("--interactive", is_flag=True,
              help="Also export dit_recache, the graph prompt switches need (dysink-run --prompts).")
@spec_option("kv_cache_dtype")
@spec_option("bank_placement")
@click.option("--vae-layout", type=click.Choice(VAE_LAYOUTS), default="auto", show_default=True,
              help="The VAE graphs' inner layout: channels (Wan's, with Conv3d) or frames (each 3D convolution "
                   "as one Conv2d per temporal tap: ONNX Runtime's CPU kernels are fast for 2D convolutions "
                   "only); same inputs, outputs and values up to float rounding. auto: frames for fp32, "
                   "channels for fp16 / bf16.")
@_stream_options
def onnx_command(model_name, model_config, checkpoint, lora, vae, pe, ema, precision, out, overwrite, graphs, seed,
                 opset, ir_version, encoder_frames, tokenizer, text_encoder, text_encoder_preset, interactive,
                 kv_cache_dtype, bank_placement, vae_layout, **stream_flags):
    """Export the ONNX graphs of one stream configuration into a bundle directory."""
    from ..models.factory import CheckpointPaths  # lazy: torch
    from .onnx_export import export_onnx  # lazy: torch

    t0 = time.perf_counter()
    model = resolve_model(model_name, model_config)
    check_export(model, precision, psutil.virtual_memory().available)    # from formulas, before building
    overrides = {k: v for k, v in stream_flags.items() if v is not None}
    paths = CheckpointPaths(dit=checkpoint, lora=lora, vae=vae, pe=pe, use_ema=ema)
    if paths.any() and not all((checkpoint, vae, pe)):
        click.echo("warning: networks without a checkpoint keep random weights (frames will be meaningless)",
                   err=True)
    path = export_onnx(model, paths, precision, out, graphs=list(graphs) or None, overwrite=overwrite,
                       seed=seed, log=lambda m: click.echo(m, err=True), opset=opset, ir_version=ir_version,
                       encoder_frames=encoder_frames, interactive=interactive,
                       text_encoder=_text_encoder_record(tokenizer, text_encoder, text_encoder_preset, seed),
                       kv_cache_dtype=kv_cache_dtype, bank_placement=bank_placement, vae_layout=vae_layout,
                       **overrides)
    click.echo(f"wrote {path}")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


def _text_encoder_record(tokenizer, checkpoint, preset, seed) -> dict | None:
    """--text-encoder / --text-encoder-preset: export the umt5_encoder graph (the tokenizer stays a folder
    the runtime reads; it is not part of the bundle)."""
    if tokenizer:
        raise DysinkError("--tokenizer is read at run time (dysink-run --prompt ... --tokenizer DIR), not "
                          "exported; drop it here")
    if not checkpoint and not preset:
        return None
    return {"preset": preset or "umt5-xxl", "checkpoint": checkpoint, "random_seed": seed}


@click.command("inspect")
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@click.option("--quick", is_flag=True, help="Skip sha256 and the ONNX checker (presence and sizes only).")
def inspect_command(bundle_path, quick):
    """Validate a bundle and print its graphs, I/O, sizes, custom-op nodes and versions."""
    t0 = time.perf_counter()
    graphs: dict = {}
    bundle = check_bundle(bundle_path, verify_hashes=not quick, run_checker=not quick, require=(), graphs_read=graphs)
    for line in describe_bundle(bundle, graphs):
        click.echo(line)
    what = ("manifest, files present with their sizes (--quick: no sha256, no ONNX checker)" if quick else
            "manifest, sha256 of every file, ONNX checker (full) on every graph")
    click.echo(f"VALID | {what} | Runtime: {time.perf_counter() - t0:.1f}s")


@click.command("plan")
@shared("--model", "model_name", required=True)
@shared("--precision", type=click.Choice(PRECISIONS), default=spec_default("precision"))
@shared("--height", type=int, default=None, default_text=preset_default_text("height") + "; searched down when not given")
@shared("--width", type=int, default=None, default_text=preset_default_text("width"))
@click.option("--memory", required=True, help="Device memory to plan for, e.g. 16GB, 24GB, 64GB (Jetson AGX Orin: "
                                               "give what is free, not the board's total).")
@shared("--bank-capacity", type=int, default=None, default_text="16, the release's; smaller ones searched when not given")
@shared("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES), default=None,
        default_text="search auto, bf16, fp8 (desktop), int8")
@shared("--bank-placement", type=click.Choice(BANK_PLACEMENTS), default=None,
        default_text="search device and host (desktop); device on Jetson")
@click.option("--platform", type=click.Choice(list(PLATFORMS)), default="desktop", show_default=True,
              help="desktop: a discrete GPU (fp8 pages on sm_89+, a host-side bank saves device memory); jetson: "
                   "Orin (sm_87: int8 pages, one memory for CPU and GPU).")
def plan_command(model_name, precision, height, width, memory, bank_capacity, kv_cache_dtype, bank_placement,
                 platform):
    """Device memory of one stream from formulas (no torch): the figures of the requested configuration,
    then every configuration that fits (page dtype, bank placement, bank capacity, resolution), best first."""
    model = model_preset(model_name)
    overrides = {k: v for k, v in (("height", height), ("width", width), ("bank_capacity", bank_capacity))
                 if v is not None}
    stream = model.default_stream(**overrides)
    budget = parse_memory(memory)
    if platform == "jetson" and precision == "bf16":
        click.echo(JETSON_PRECISION_NOTE)
    if platform == "jetson" and kv_cache_dtype == "fp8":
        raise DysinkError(f"--kv-cache-dtype fp8 on --platform jetson: {FP8_NOTE}")
    if platform == "jetson" and bank_placement != "device":
        click.echo("note: on Jetson CPU and GPU share one memory: --bank-placement host saves nothing there (its "
                   "top_k staging pages cost more) "
                   + ("(planned anyway, as asked)" if bank_placement == "host" else "(not searched)"))
    result = plan(model, stream, precision, budget, platform, kv_cache_dtype or "auto", bank_placement or "device")
    for line in format_plan(result):
        click.echo(line)
    click.echo(export_line(model, precision))
    found = search(model, stream, precision, budget, platform,
                   kv_cache_dtypes=[kv_cache_dtype] if kv_cache_dtype else None,
                   placements=[bank_placement] if bank_placement else None,
                   resolutions=[(stream.height, stream.width)] if height or width else None,
                   capacity_fixed=bank_capacity is not None)
    if platform == "desktop" and not kv_cache_dtype:
        click.echo(f"note: {FP8_NOTE}")
    if any(p.kv_cache_dtype in ("fp8", "int8") for p in found):
        click.echo(f"note: {Q8_BACKENDS_NOTE}")
    if not found:
        check_fits(result, stream)
        raise DysinkError(f"nothing in the searched options fits in {budget / GB:.1f} GB")
    for line in format_options(found, budget):
        click.echo(line)
    click.echo(f"PASSED | {len(found)} configuration{'s' if len(found) != 1 else ''} fit; best: {flags(found[0])} "
               "(flags of dysink-export onnx and dysink-run)")


@click.command("build")
@shared("--bundle", "bundle_path", type=click.Path(), required=True, note="Engines are built for its ONNX graphs.")
@click.option("--out", type=click.Path(), default=None, help="Write a new bundle here instead of adding engines in place.")
@shared("--graph", "graphs", multiple=True)
@click.option("--workspace", "workspace_gb", type=float, default=None, help="Builder workspace limit in GB.")
@click.option("--opt-level", type=int, default=None,
              help="Builder optimization level 0..5. [default: TensorRT's, 3]")
@click.option("--timing-cache", type=click.Path(), default=None, help="Timing cache file, read if present, then updated.")
@click.option("--hardware-compat", is_flag=True,
              help="Engines that run on any Ampere-or-newer GPU (slower); with --no-plugins only: the plugin "
                   "library's kernels are compiled per architecture.")
@click.option("--plugins", type=click.Path(), default=None,
              help="Plugin library from dysink-export plugins, copied into BUNDLE/plugins/ and recorded relative to "
                   "the bundle. [default: BUNDLE/plugins/libdysink_plugins.so]")
@click.option("--no-plugins", "native", is_flag=True,
              help="Build the custom ops from their ONNX function bodies (standard layers, no plugin library): "
                   "slower engines for when the plugin library does not load.")
def build_command(bundle_path, out, graphs, workspace_gb, opt_level, timing_cache, hardware_compat, plugins, native):
    """Build TensorRT engines from a bundle's ONNX graphs (on the GPU that will run them).

    Strongly typed networks: the precision is the ONNX graph's. Needs TensorRT's Python package and
    cuda-python; engines are written beside the ONNX files and recorded in bundle.json.
    """
    t0 = time.perf_counter()
    path = build_engines(bundle_path, out, list(graphs) or None, workspace_gb, opt_level, timing_cache,
                         hardware_compat, plugins, native=native, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote engines into {path}")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


@click.command("trt-onnx")
@shared("--bundle", "bundle_path", type=click.Path(), required=True)
@click.option("--out", type=click.Path(), required=True,
              help="Directory to create with the function-free graphs (external data linked beside them).")
@shared("--graph", "graphs", multiple=True)
@shared("--overwrite", is_flag=True, note="A directory is replaced only once the new one is complete.")
@click.option("--plugins", type=click.Path(), default=None,
              help="Plugin library named in the printed trtexec / polygraphy commands. "
                   "[default: BUNDLE/plugins/libdysink_plugins.so]")
@click.option("--copy-data", is_flag=True,
              help="Copy external weight files instead of linking them symbolically (a self-contained directory "
                   "that the onnx package also loads; it refuses linked external data).")
def trt_onnx_command(bundle_path, out, graphs, overwrite, plugins, copy_data):
    """Write a bundle's graphs without their dysink local functions, for trtexec / polygraphy.

    TensorRT's ONNX parser imports a node as the model-local function of the same name instead of
    the plugin (before 10.7 always; later when the plugin library is not loaded); these copies keep
    the custom nodes and their plugin attributes and drop the function bodies. External weight
    files are symbolic links to the bundle's (--copy-data: copies). dysink-export build does the
    same in memory; engines from trtexec are not recorded in bundle.json.
    """
    t0 = time.perf_counter()
    written = write_trt_onnx(bundle_path, out, list(graphs) or None, overwrite, copy_data)
    lib = Path(plugins) if plugins else Path(bundle_path) / "plugins" / PLUGIN_LIBRARY
    for g in written:
        removed = ", ".join(g.removed) or "none"
        data = "".join(f"; external data {how}: {loc}" for loc, how in g.placed.items())
        click.echo(f"wrote {g.file} (functions removed: {removed}{data})")
    click.echo("build an engine per graph as dysink-export build does (add --memPoolSize=workspace:<MiB>, "
               "--builderOptimizationLevel=N, --timingCacheFile=FILE for its --workspace, --opt-level, "
               "--timing-cache; no --hardwareCompatibilityLevel: the plugins' cubins are per architecture):")
    for g in written:
        click.echo(f"  {trtexec_command(g.file, lib)}")
    click.echo("see the TensorRT layers of a graph (plugin layers, not function bodies):")
    shown = next((g for g in written if g.removed), written[0])
    click.echo(f"  {polygraphy_command(shown.file, lib)}")
    if not lib.is_file():
        click.echo(f"note: no plugin library at {lib} yet: dysink-export plugins --bundle {bundle_path} "
                   f"--arch <this GPU, e.g. 87> --out {Path(bundle_path) / 'plugins'}")
    click.echo("note: engines from trtexec are not recorded in bundle.json; dysink-run --backend tensorrt uses "
               "those of dysink-export build")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


COMMANDS: list = [onnx_command, inspect_command, plan_command, build_command, trt_onnx_command]
