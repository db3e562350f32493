"""`dysink-run`: stream a DySink video into a directory.

Flags only; the work is in `dysink_deploy.runtime.run`. User errors print one
line (`error: ...`) and exit 2; Ctrl-C keeps what was written and exits 130.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time

import click
import numpy as np

from ..config import MODEL_PRESETS, StreamConfig, stream_config_from_dict
from ..errors import DysinkError
from .backends import BACKENDS
from ..cli.prompt_cmd import encode_for, text_encoder_options
from ..cli.common import (checkpoint_file_options, exit_code, install_stop_signals, model_config_option,
                          resolve_model, shared, OneLineCommand, flag_names)

_DEFAULT = StreamConfig()
ORT_PROVIDERS = ("cpu", "cuda", "tensorrt")
# Flags that choose weights / precision / device of the torch reference: a bundle fixes all of them.
_TORCH_ONLY = ("checkpoint", "lora", "vae", "pe", "use_ema", "weights_seed", "device", "precision", "kernels")


def _stream_overrides(kw: dict) -> dict:
    names = ["top_k", "local_attn_size", "sink_size", "gate_threshold", "dedup_threshold", "bank_capacity",
             "eviction", "feature_mode", "height", "width"]
    return {n: kw[n] for n in names if kw.get(n) is not None}


MAX_CONFIG_BYTES = 1 << 20


def _load_config_file(path: str | None) -> dict:
    if not path:
        return {}
    from ..jsonfile import read_json_object

    return read_json_object(path, "--config", MAX_CONFIG_BYTES, "file of stream settings")


def check_memory(model, stream, precision: str, device: str) -> None:
    """Refuse, before allocating anything, a stream the device cannot hold (planner estimate)."""
    from ..export.plan import GB, plan

    if device.startswith("cuda"):
        import torch

        available = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        import psutil

        available = psutil.virtual_memory().available
    need = plan(model, stream, precision, available).total
    if need > available:
        raise DysinkError(f"this stream needs about {need / GB:.1f} GB ({model.name}, {stream.width}x{stream.height}, "
                          f"{precision}, bank capacity {stream.bank_capacity}) but {device} has {available / GB:.1f} GB "
                          "available; lower --height/--width or --bank-capacity (dysink-export plan shows the figures)")


def build_torch_streamer(model, kw, stream, prompt_embeds, seed, prompts=None):
    import torch

    from ..models.factory import CheckpointPaths, build_models
    from .backends.torch_backend import TorchBackend
    from .stream import Streamer

    paths = CheckpointPaths(dit=kw["checkpoint"], lora=kw["lora"], vae=kw["vae"], pe=kw["pe"], use_ema=kw["use_ema"])
    device = kw["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DysinkError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if kw.get("threads"):
        torch.set_num_threads(kw["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kw["precision"]]
    check_memory(model, stream, kw["precision"], device)
    models = build_models(model, paths, seed=kw["weights_seed"])
    backend = TorchBackend(models, stream, device=device, dtype=dtype, kernels=kw["kernels"])
    return Streamer(backend, model.dit, stream, prompt_embeds, seed=seed, prompts=prompts)


def build_onnxruntime_streamer(bundle, provider: str, stream: StreamConfig, prompt_embeds, seed: int, prompts=None,
                               threads: int | None = None):
    """Streamer over the bundle's ONNX graphs (no torch import on this path)."""
    from .backends.onnxruntime_backend import OnnxRuntimeBackend
    from .stream import Streamer

    backend = OnnxRuntimeBackend(bundle, providers=provider, threads=threads)
    return Streamer(backend, bundle.model.dit, stream, prompt_embeds, seed=seed, prompts=prompts)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def needs_real_prompt(model, has_checkpoints: bool) -> bool:
    """The embedded default prompt is for random weights only: not with checkpoints, nor for the
    released presets other than tiny (a custom --model-config with random weights may use it)."""
    return has_checkpoints or (model.name in MODEL_PRESETS and model.name != "tiny")


def bundle_stream_config(bundle, wanted: dict) -> StreamConfig:
    """The bundle's stream config with the host-side settings the caller may still change
    (dedup threshold, eviction, schedule); graph settings in `wanted` must agree with the bundle."""
    from ..bundle import GRAPH_STREAM_FIELDS, rebuild_command

    wanted_cfg = stream_config_from_dict(wanted, base=bundle.stream)   # validates names and values
    conflicts = [f"{n}={wanted[n]!r} (bundle: {getattr(bundle.stream, n)!r})" for n in GRAPH_STREAM_FIELDS
                 if n in wanted and getattr(wanted_cfg, n) != getattr(bundle.stream, n)]
    if conflicts:
        raise DysinkError(f"bundle {bundle.path} fixes the stream settings baked into its graphs, and "
                          f"{'; '.join(conflicts)} differ; drop the setting(s) or export a bundle for them: "
                          f"{rebuild_command(bundle.model, wanted_cfg, bundle.precision, 'NEW_BUNDLE', bundle.path / 'bundle.json', bundle.manifest.get('checkpoints'))}")
    return wanted_cfg


def _bundle_stream(bundle, kw: dict) -> StreamConfig:
    return bundle_stream_config(bundle, {**_load_config_file(kw["config_file"]), **_stream_overrides(kw)})


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@shared("--model", "model_name", default=None, default_text="tiny; with --bundle: the bundle's")
@model_config_option
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="torch: the PyTorch models; onnxruntime / tensorrt: a bundle's graphs / engines.")
@shared("--bundle", type=click.Path(), default=None,
        note="For --backend onnxruntime / tensorrt; it fixes model, weights, precision and the stream settings "
             "baked into its graphs.")
@shared("--ort-provider", type=click.Choice(ORT_PROVIDERS), default="cpu")
@shared("--blocks", type=int, default=None, default_text="12")
@click.option("--seconds", type=float, default=None,
              help="Video length instead of --blocks, at 16 fps, rounded up to whole blocks.")
@shared("--seed", type=int, default=0)
@click.option("--out", required=True, type=click.Path(), help="Output directory (video.mp4, stats.json, timeline.png).")
@shared("--overwrite", is_flag=True)
@click.option("--prompts", "prompts_file", type=click.Path(), default=None,
              help='Prompt schedule: a JSON list of {"frame": F, "prompt": TEXT or "prompt_embeds": FILE} (latent '
                   "frames); each switch recaches the bank and the window (a bundle needs --interactive).")
@shared("--prompt", "prompt_text", default=None, note="Needs --tokenizer; real weights need --text-encoder.")
@text_encoder_options
@click.option("--prompt-embeds", type=click.Path(), default=None,
              help="umT5 output [512, 4096] in a .safetensors file (real checkpoints need it or --prompt). "
                   "[default: the tiny demo's embedded prompt]")
@checkpoint_file_options
@shared("--use-ema", is_flag=True)
@shared("--weights-seed", type=int, default=0)
@click.option("--device", default="cpu", show_default=True, help="torch backend: cpu or cuda[:N].")
@shared("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", note="torch backend.")
@click.option("--kernels", type=click.Choice(["auto", "triton", "reference"]), default="auto", show_default=True,
              help="torch backend: custom ops as Triton kernels or PyTorch references (auto: triton on CUDA, "
                   "reference on CPU).")
@shared("--threads", type=int, default=None, default_text="all cores")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="JSON file of stream settings (names as in stats.json's config.stream).")
@shared("--top-k", type=int, default=None, default_text=str(_DEFAULT.top_k))
@shared("--local-attn-size", type=int, default=None, default_text=str(_DEFAULT.local_attn_size))
@shared("--sink-size", type=int, default=None, default_text=str(_DEFAULT.sink_size))
@shared("--gate-threshold", type=float, default=None, default_text=str(_DEFAULT.gate_threshold))
@shared("--dedup-threshold", type=float, default=None,
        default_text=f"{_DEFAULT.dedup_threshold}, the release's; with --bundle: the bundle's")
@shared("--bank-capacity", type=int, default=None, default_text=str(_DEFAULT.bank_capacity))
@click.option("--eviction", type=click.Choice(["lru", "fifo"]), default=None,
              help="Which entry leaves a full bank: least recently retrieved, or oldest. [default: lru]")
@shared("--feature-mode", type=click.Choice(["block-alone", "streamed"]), default=None, default_text="block-alone")
@shared("--height", type=int, default=None, default_text="the preset's: 64 for tiny, 480 for wan2.1-t2v-1.3b")
@shared("--width", type=int, default=None, default_text="the preset's: 96 for tiny, 832 for wan2.1-t2v-1.3b")
@click.option("--cuda-graph", is_flag=True,
              help="tensorrt backend: replay engine launches as CUDA graphs (captured on their second launch).")
@shared("--quiet", is_flag=True)
@click.option("--dump-block", type=(int, click.Path()), default=None, metavar="N DIR",
              help="Save block N's dit_step inputs and outputs as .npy into DIR (for the C++ embedding example).")
def main(**kw):
    """Stream a DySink video block by block into --out (video.mp4, stats.json, timeline.png)."""
    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in ["dysink-run", *sys.argv[1:]])
    ctx = click.get_current_context()
    kw["_given"] = {name for name in kw
                    if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    install_stop_signals()
    try:
        result = run_cli(kw)
    except DysinkError as exc:
        click.echo(f"error: {flag_names(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:        # stopped before the stream began: nothing was written
        click.echo(f"interrupted before the first block ({exc.args[0] if exc.args else 'SIGINT'})", err=True)
        sys.exit(exit_code(exc))
    runtime = time.perf_counter() - started
    status = "INTERRUPTED" if result.interrupted else "DONE"
    click.echo(f"{status} | {_n(result.blocks, 'block')}, {_n(result.frames, 'frame')} -> {result.out} | "
               f"Runtime: {runtime:.1f}s | Command: {command}")
    if result.interrupted:
        sys.exit(result.exit_code or 130)


def run_cli(kw: dict):
    from .run import (OUTPUT_FILES, blocks_for_seconds, check_out_dir, default_prompt_embeds, load_prompt_embeds,
                      lock_out_dir, prepare_out_dir, stream_to_dir)

    if kw["blocks"] is not None and kw["seconds"] is not None:
        raise DysinkError("give --blocks or --seconds, not both")
    for name in ("seed", "weights_seed"):
        if not 0 <= kw[name] < 2 ** 63:
            raise DysinkError(f"--{name.replace('_', '-')} must lie in 0..2**63-1, got {kw[name]}")
    if kw.get("threads") is not None and kw["threads"] < 1:
        raise DysinkError(f"--threads must be >= 1, got {kw['threads']}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", kw["device"]):
        raise DysinkError(f"--device must be cpu, cuda or cuda:N, got {kw['device']!r}")
    if kw["blocks"] is not None and kw["blocks"] < 1:
        raise DysinkError(f"--blocks must be >= 1, got {kw['blocks']}")
    given = kw.get("_given", set())
    files = [(flag, kw.get(n)) for flag, n in (("--checkpoint", "checkpoint"), ("--lora", "lora"), ("--vae", "vae"),
                                               ("--pe", "pe"), ("--prompt-embeds", "prompt_embeds"),
                                               ("--prompts", "prompts_file"), ("--config", "config_file"),
                                               ("--text-encoder", "text_encoder"))]
    missing = [f"{flag} {path}" for flag, path in files if path and not os.path.exists(path)]
    if missing:     # all of them at once, not one per run
        raise DysinkError(f"{'these files do' if len(missing) > 1 else 'this file does'} not exist: "
                          f"{'; '.join(missing)}")
    backend = kw["backend"]
    if backend == "torch" and kw["bundle"]:
        raise DysinkError("--bundle is read by --backend onnxruntime and tensorrt only; drop it or choose one of them")
    if backend == "torch" and "ort_provider" in given:
        raise DysinkError("--ort-provider applies to --backend onnxruntime only")
    bundle = None
    if backend == "tensorrt" and "ort_provider" in given:
        raise DysinkError("--ort-provider applies to --backend onnxruntime only")
    if backend != "tensorrt" and kw.get("cuda_graph"):
        raise DysinkError("--cuda-graph applies to --backend tensorrt only")
    if backend in ("onnxruntime", "tensorrt"):
        if not kw["bundle"]:
            how = ("`dysink-export onnx` (e.g. dysink-export onnx --model tiny --precision fp32 --out bundles/tiny-fp32)"
                   if backend == "onnxruntime" else "`dysink-export onnx` + `dysink-export build` (its engines)")
            raise DysinkError(f"--backend {backend} needs --bundle DIR from {how}")
        torch_flags = [f"--{n.replace('_', '-')}" for n in _TORCH_ONLY if n in given]
        if torch_flags:
            raise DysinkError(f"{', '.join(torch_flags)}: torch-backend flag(s); a bundle already fixes the weights, "
                              "precision and device: drop the flag(s) or use --backend torch")
        from ..bundle import Bundle

        bundle = Bundle.load(kw["bundle"])
        if kw.get("model_config"):
            raise DysinkError("--model-config: a bundle already fixes the model; drop it or use --backend torch")
        if kw["model_name"] is not None and kw["model_name"] != bundle.model.name:
            raise DysinkError(f"--model {kw['model_name']} conflicts with bundle {bundle.path}, built for model "
                              f"{bundle.model.name!r}; drop --model or use a bundle exported for it")
        model = bundle.model
        stream = _bundle_stream(bundle, kw)
        has_ckpt = any(k != "random_seed" for k in bundle.manifest.get("checkpoints", {}))
    else:
        model = resolve_model(kw["model_name"], kw.get("model_config"), default="tiny")
        settings = {"height": model.height, "width": model.width, **_load_config_file(kw["config_file"]),
                    **_stream_overrides(kw)}
        stream = stream_config_from_dict(settings)
        has_ckpt = any(kw[k] for k in ("checkpoint", "lora", "vae", "pe"))
    blocks = kw["blocks"] if kw["blocks"] is not None else (
        blocks_for_seconds(kw["seconds"], stream.block_frames) if kw["seconds"] is not None else 12)

    switches = []
    text_encoder_cache: dict = {}

    def encode(text: str):
        """A text prompt -> embeddings: the bundle's umt5_encoder graph (no torch) when it has one,
        else the PyTorch encoder."""
        if bundle is not None and bundle.text_encoder is not None:
            if kw.get("text_encoder") or kw.get("text_encoder_preset"):
                raise DysinkError(f"bundle {bundle.path} holds its text encoder ({bundle.text_encoder['preset']}); "
                                  "drop --text-encoder / --text-encoder-preset")
            if not kw.get("tokenizer"):
                raise DysinkError("a text prompt needs --tokenizer DIR (the release's google/umt5-xxl folder)")
            from ..text import PromptTokenizer
            from .backends.onnxruntime_backend import _ort, load_session

            if "session" not in text_encoder_cache:      # one session and tokenizer for every prompt of the run
                ort = _ort()
                text_encoder_cache["session"] = load_session(
                    ort, bundle, "umt5_encoder", str(bundle.graph_path("umt5_encoder")), ort.SessionOptions(),
                    ("CPUExecutionProvider",))
                text_encoder_cache["tokenizer"] = PromptTokenizer(kw["tokenizer"])
            ids, mask = text_encoder_cache["tokenizer"](text)
            (out,) = text_encoder_cache["session"].run(["prompt_embeds"], {"ids": ids[None], "mask": mask[None]})
            return np.asarray(out, dtype=np.float32)
        return encode_for(text, kw.get("tokenizer"), kw.get("text_encoder"), kw.get("text_encoder_preset"),
                          text_dim=model.dit.text_dim)
    if (kw.get("prompt_text") is not None or kw.get("prompts_file")) and has_ckpt and kw.get("tokenizer") \
            and not kw.get("text_encoder"):
        raise DysinkError("real weights need the real text encoder: pass --text-encoder "
                          "models_t5_umt5-xxl-enc-bf16.pth with --tokenizer")
    if kw.get("prompt_text") is not None:
        if kw["prompt_embeds"] or kw.get("prompts_file"):
            raise DysinkError("give one of --prompt, --prompt-embeds and --prompts")
        kw = {**kw, "_initial_prompt": encode(kw["prompt_text"])}
    elif kw.get("text_encoder") or kw.get("tokenizer"):
        if not kw.get("prompts_file"):
            raise DysinkError("--tokenizer / --text-encoder encode text prompts: give --prompt TEXT (or --prompts)")
    if kw.get("prompts_file"):
        from .run import load_prompt_schedule

        switches = load_prompt_schedule(kw["prompts_file"], model, encode)
        if switches[0][0] == 0:
            if kw["prompt_embeds"]:
                raise DysinkError("--prompts sets the prompt of frame 0 and --prompt-embeds does too; drop one")
            kw = {**kw, "_initial_prompt": switches.pop(0)[1]}
        if switches and bundle is not None and not bundle.interactive:
            raise DysinkError(f"bundle {bundle.path} has no dit_recache graph, which prompt switches need; "
                              f"export it with --interactive: {bundle.rebuild_command()} --interactive")
    if kw.get("_initial_prompt") is not None:
        prompt = kw["_initial_prompt"]
    elif kw["prompt_embeds"]:
        prompt = load_prompt_embeds(kw["prompt_embeds"], model)
    elif needs_real_prompt(model, has_ckpt):
        raise DysinkError("a real model needs real text conditioning: pass --prompt-embeds FILE.safetensors "
                          f"(umT5-XXL output, [{model.dit.text_len}, {model.dit.text_dim}])")
    else:
        prompt = default_prompt_embeds(model)
    # Build the backend before creating --out: weights, a provider or a precision
    # this machine cannot run fail before anything is written.
    check_out_dir(kw["out"], kw["overwrite"])
    if bundle is not None and backend == "tensorrt":
        from .backends.tensorrt_backend import TensorRTBackend
        from .stream import Streamer

        streamer = Streamer(TensorRTBackend(bundle, cuda_graph=kw.get("cuda_graph", False)), bundle.model.dit, stream, prompt,
                            seed=kw["seed"], prompts=switches)
        details = {"bundle": str(bundle.path), "precision": bundle.precision, "cuda_graph": kw.get("cuda_graph", False),
                   "engines": {g: {k: e.get(k) for k in ("tensorrt_version", "compute_capability")}
                               for g, e in bundle.manifest.get("engines", {}).items()},
                   "checkpoints": bundle.manifest.get("checkpoints", {})}
    elif bundle is not None:
        streamer = build_onnxruntime_streamer(bundle, kw["ort_provider"], stream, prompt, kw["seed"], switches,
                                              threads=kw.get("threads"))
        details = {"bundle": str(bundle.path), "precision": bundle.precision, "ort_provider": kw["ort_provider"],
                   "checkpoints": bundle.manifest.get("checkpoints", {})}
    else:
        streamer = build_torch_streamer(model, kw, stream, prompt, kw["seed"], switches)
        details = {"precision": kw["precision"], "device": kw["device"], "kernels": streamer.backend.kernels,
                   "checkpoints": {k: kw[k] for k in ("checkpoint", "lora", "vae", "pe") if kw[k]}}
    if kw["dump_block"]:
        from .dump import BlockDumper

        block, dump_dir = kw["dump_block"]
        if block >= blocks:
            raise DysinkError(f"--dump-block {block}: the run has only {blocks} blocks (0..{blocks - 1})")
        if os.path.exists(dump_dir) and os.listdir(dump_dir):
            raise DysinkError(f"--dump-block directory {dump_dir!r} is not empty; choose an empty or new one")
        streamer.backend = BlockDumper(streamer.backend, block, dump_dir, len(stream.timesteps()),
                                       model.dit.freq_dim, details.get("precision", kw["precision"]))
        details["dump_block"] = {"block": block, "dir": os.path.abspath(dump_dir)}
    prepare_out_dir(kw["out"], kw["overwrite"])
    lock = lock_out_dir(kw["out"])          # held until the process ends
    if kw["overwrite"]:                     # the previous run's outputs go now, not one by one later
        for name in OUTPUT_FILES:
            path = os.path.join(kw["out"], name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
    run_config = {
        "model": model.name, "backend": backend, "seed": kw["seed"], "blocks": blocks, **details,
        "prompt_embeds": kw["prompt_embeds"] or "embedded-default",
        "prompts": kw.get("prompts_file"),
        "stream": stream.to_dict(), "timesteps": stream.timesteps(),
    }
    try:
        return stream_to_dir(streamer, model, stream, blocks, os.path.abspath(kw["out"]), run_config,
                             progress=not kw["quiet"])
    finally:
        lock.close()


if __name__ == "__main__":
    main()
