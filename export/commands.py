"""Click commands of `dysink-export` for ONNX bundles: `onnx` and `inspect`.

Thin: they parse flags and call `onnx_export.export_onnx` / `check_bundle`.
Stream flags are generated from `bundle.GRAPH_STREAM_FIELDS` and default to
the preset's released stream (StreamConfig is the single source of defaults).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time

import click

from ..bundle import GRAPH_STREAM_FIELDS
from ..config import FEATURE_MODES, MODEL_PRESETS, StreamConfig
from ..graphs import PRECISIONS
from ..cli.common import checkpoint_file_options, model_config_option, resolve_model


def _stream_options(fn):
    types = {f.name: f.type for f in dataclasses.fields(StreamConfig)}
    for name in reversed(GRAPH_STREAM_FIELDS):
        flag = name.replace("_", "-")
        default = getattr(StreamConfig(), name)
        if isinstance(default, bool):
            opt = click.option(f"--{flag}/--no-{flag}", name, default=None,
                               help=f"stream setting {name} (default: {default})")
        elif name == "feature_mode":
            opt = click.option(f"--{flag}", name, type=click.Choice(FEATURE_MODES), default=None,
                               help=f"stream setting {name} (default: {default})")
        else:
            kind = float if isinstance(default, float) or types[name] in (float, "float") else int
            opt = click.option(f"--{flag}", name, type=kind, default=None,
                               help=f"stream setting {name} (default: the preset's, {default} for 480x832)"
                               if name in ("height", "width") else f"stream setting {name} (default: {default})")
        fn = opt(fn)
    return fn


@click.command("onnx")
@click.option("--model", "model_name", type=click.Choice(sorted(MODEL_PRESETS)), default=None,
              help="model preset (or --model-config)")
@model_config_option
@checkpoint_file_options
@click.option("--ema/--no-ema", default=False, help="use generator_ema from the DiT checkpoint")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--out", type=click.Path(), required=True, help="bundle directory to create")
@click.option("--overwrite", is_flag=True, help="replace an existing bundle at --out (only once the new one is complete)")
@click.option("--graph", "graphs", multiple=True, help="export only this graph (repeatable; default: all)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the weights no checkpoint replaces")
@click.option("--opset", type=int, default=None,
              help="ONNX opset of graphs and function bodies, 18..23 (default: 20, what TensorRT 10.x parsers "
                   "accept; 22 for bf16, whose Conv needs it; TensorRT 11.x accepts up to 25)")
@click.option("--ir-version", type=int, default=None,
              help="ONNX IR version (default: 9 with opset 20, else the opset's minimum)")
@click.option("--encoder-frames", "encoder_frames", type=int, multiple=True,
              help="also export memory_encoder_tN for N frames (PE-Core on clips of that length; repeatable)")
@click.option("--interactive", is_flag=True,
              help="also export dit_recache, the graph prompt switches need (dysink-run --prompts)")
@_stream_options
def onnx_command(model_name, model_config, checkpoint, lora, vae, pe, ema, precision, out, overwrite, graphs, seed,
                 opset, ir_version, encoder_frames, interactive, **stream_flags):
    """Export the ONNX graphs of one stream configuration into a bundle directory."""
    from ..models.factory import CheckpointPaths
    from .onnx_export import export_onnx

    t0 = time.perf_counter()
    model = resolve_model(model_name, model_config)
    overrides = {k: v for k, v in stream_flags.items() if v is not None}
    paths = CheckpointPaths(dit=checkpoint, lora=lora, vae=vae, pe=pe, use_ema=ema)
    if paths.any() and not all((checkpoint, vae, pe)):
        click.echo("warning: networks without a checkpoint keep random weights (frames will be meaningless)",
                   err=True)
    path = export_onnx(model, paths, precision, out, graphs=list(graphs) or None, overwrite=overwrite,
                       seed=seed, log=lambda m: click.echo(m, err=True), opset=opset, ir_version=ir_version,
                       encoder_frames=encoder_frames, interactive=interactive,
                       **overrides)
    click.echo(f"wrote {path}")
    click.echo(f"PASSED | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


@click.command("inspect")
@click.option("--bundle", "bundle_path", type=click.Path(), required=True, help="bundle directory")
@click.option("--quick", is_flag=True, help="skip sha256 and the ONNX checker (presence and sizes only)")
def inspect_command(bundle_path, quick):
    """Validate a bundle and print its graphs, I/O, sizes, custom-op nodes and versions."""
    from .onnx_export import check_bundle, describe_bundle

    bundle = check_bundle(bundle_path, verify_hashes=not quick, run_checker=not quick, require=())
    for line in describe_bundle(bundle):
        click.echo(line)


@click.command("plan")
@click.option("--model", "model_name", type=click.Choice(sorted(MODEL_PRESETS)), required=True, help="model preset")
@click.option("--precision", type=click.Choice(PRECISIONS), default="bf16", show_default=True)
@click.option("--height", type=int, default=None, help="pixels (default: the preset's)")
@click.option("--width", type=int, default=None, help="pixels (default: the preset's)")
@click.option("--memory", required=True, help="device memory to plan for, e.g. 64GB (Jetson AGX Orin), 24GB, 16GiB")
@click.option("--bank-capacity", type=int, default=None, help="bank entries to check (default: the released 16)")
@click.option("--platform", type=click.Choice(["desktop", "jetson"]), default="desktop", show_default=True,
              help="size of the fixed reserve (CUDA context, TensorRT)")
def plan_command(model_name, precision, height, width, memory, bank_capacity, platform):
    """Device memory of one stream: weights, K/V pool pages, caches, activations; the largest bank that fits."""
    from ..config import model_preset
    from .plan import check_fits, format_plan, parse_memory, plan

    model = model_preset(model_name)
    overrides = {k: v for k, v in (("height", height), ("width", width), ("bank_capacity", bank_capacity)) if v}
    stream = model.default_stream(**overrides)
    result = plan(model, stream, precision, parse_memory(memory), platform)
    for line in format_plan(result):
        click.echo(line)
    check_fits(result, stream)
    click.echo(f"PASSED | fits with bank capacity {stream.bank_capacity} (largest: {result.max_bank_capacity})")


@click.command("build")
@click.option("--bundle", "bundle_path", type=click.Path(), required=True, help="ONNX bundle to build engines for")
@click.option("--out", type=click.Path(), default=None, help="write a new bundle here instead of adding engines in place")
@click.option("--graph", "graphs", multiple=True, help="build only this graph (repeatable; default: all)")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="builder workspace limit in GB")
@click.option("--opt-level", type=int, default=None, help="builder optimization level 0..5 (TensorRT's default: 3)")
@click.option("--timing-cache", type=click.Path(), default=None, help="timing cache file, read if present, then updated")
@click.option("--hardware-compat", is_flag=True, help="engines that run on any Ampere-or-newer GPU (slower)")
@click.option("--plugins", type=click.Path(), default=None,
              help="plugin library (default: BUNDLE/plugins/libdysink_plugins.so from dysink-export plugins)")
def build_command(bundle_path, out, graphs, workspace_gb, opt_level, timing_cache, hardware_compat, plugins):
    """Build TensorRT engines from a bundle's ONNX graphs (on the GPU that will run them).

    Strongly typed networks: the precision is the ONNX graph's. Needs TensorRT's Python package and
    cuda-python; engines are written beside the ONNX files and recorded in bundle.json.
    """
    from .trt_build import build_engines

    t0 = time.perf_counter()
    path = build_engines(bundle_path, out, list(graphs) or None, workspace_gb, opt_level, timing_cache,
                         hardware_compat, plugins, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote engines into {path}")
    click.echo(f"PASSED | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


COMMANDS: list = [onnx_command, inspect_command, plan_command, build_command]
