"""The one stream builder: `RunSpec` -> (`Streamer`, run config).

`resolve_run` does everything that needs no backend (bundle, model, stream settings, blocks,
prompt and switches), so callers can refuse bad input before any weights load;
`open_streamer` adds the memory check and the backend. `dysink-run`, `api.open_stream`, every
`dysink-bench` command, the Triton Inference Server model and `dysink-export check` open their
streams here and nowhere else. Torch is imported only on the torch backend's path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..bundle import GRAPH_STREAM_FIELDS, Bundle, rebuild_command
from ..config import MODEL_PRESETS, ModelConfig, StreamConfig, model_config_from_file, model_preset, \
    stream_config_from_dict
from ..errors import ConfigError, DysinkError
from ..jsonfile import read_json_object
from ..limits import BLOCKS_WHY, MAX_BLOCKS
from .backends.onnxruntime_backend import OnnxRuntimeBackend
from .backends.tensorrt_backend import TensorRTBackend
from .host_bank import HostBankBackend
from .plan import check_allocation
from .prompts import (PromptEncoder, check_switches, default_prompt_embeds, embeds_of, load_prompt_schedule,
                      needs_real_prompt)
from .run import blocks_for_seconds
from .spec import DEFAULT_BLOCKS, RunSpec
from .stream import Streamer

MAX_CONFIG_BYTES = 1 << 20


@dataclass
class ResolvedRun:
    """What a RunSpec means once its files are read: no backend yet."""

    spec: RunSpec
    model: ModelConfig
    stream: StreamConfig
    blocks: int
    prompt: np.ndarray = field(repr=False)
    switches: list = field(default_factory=list, repr=False)
    bundle: Bundle | None = None
    has_checkpoints: bool = False


def load_model_config(source) -> ModelConfig:
    """A ModelConfig from a preset name, a dict, a JSON file (a ModelConfig's `to_dict`, or a
    bundle.json, whose model is used), or a ModelConfig; validated with the presets' messages."""
    if isinstance(source, ModelConfig):
        return source
    if isinstance(source, Mapping):
        return ModelConfig.from_dict(source)
    text = os.fspath(source)
    if text in MODEL_PRESETS:
        return model_preset(text)
    if not os.path.exists(text):
        raise DysinkError(f"model {text!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a file")
    return model_config_from_file(text, "model config")


def bundle_stream_config(bundle: Bundle, wanted: dict) -> StreamConfig:
    """The bundle's stream config with the host-side settings the caller may still change
    (dedup threshold, eviction, schedule); graph settings in `wanted` must agree with the bundle."""
    wanted_cfg = stream_config_from_dict(wanted, base=bundle.stream)   # validates names and values
    conflicts = [f"{n}={wanted[n]!r} (bundle: {getattr(bundle.stream, n)!r})" for n in GRAPH_STREAM_FIELDS
                 if n in wanted and getattr(wanted_cfg, n) != getattr(bundle.stream, n)]
    if conflicts:
        raise DysinkError(f"bundle {bundle.path} fixes the stream settings baked into its graphs, and "
                          f"{'; '.join(conflicts)} differ; drop the setting(s) or export a bundle for them: "
                          f"{rebuild_command(bundle.model, wanted_cfg, bundle.precision, 'NEW_BUNDLE', bundle.path / 'bundle.json', bundle.manifest.get('checkpoints'))}")
    return wanted_cfg


def _settings(spec: RunSpec) -> dict:
    settings = spec.settings
    if isinstance(settings, StreamConfig):
        settings = settings.to_dict()
    wanted = dict(read_json_object(spec.config_file, "--config", MAX_CONFIG_BYTES, "file of stream settings")
                  if spec.config_file else {})
    wanted.update(settings)
    return wanted


def _model_and_stream(spec: RunSpec, bundle: Bundle | None) -> tuple[ModelConfig, StreamConfig]:
    try:
        return _resolve_model_and_stream(spec, bundle)
    except ConfigError as exc:
        raise _named_by_file_key(exc, spec) from None


def _named_by_file_key(exc: ConfigError, spec: RunSpec) -> ConfigError:
    """A bad value that came from the --config file is named by its key there (top_k), with the file,
    not by the flag that would have set it; values from flags or settings keep their names."""
    if not spec.config_file:
        return exc
    settings = spec.settings.to_dict() if isinstance(spec.settings, StreamConfig) else spec.settings
    from_file = set(read_json_object(spec.config_file, "--config", MAX_CONFIG_BYTES, "file of stream settings"))
    keys = sorted(from_file - set(settings), key=len, reverse=True)
    message = str(exc)
    if keys:
        message = re.sub(r"StreamConfig\.(" + "|".join(map(re.escape, keys)) + r")\b", r"\1", message)
    unknown = re.match(r"unknown stream setting\(s\): ([^;]+);", message)
    if message == str(exc) and not (unknown and set(unknown.group(1).split(", ")) & set(keys)):
        return exc
    return ConfigError(f"RunSpec.config_file {spec.config_file}: {message}")


def _resolve_model_and_stream(spec: RunSpec, bundle: Bundle | None) -> tuple[ModelConfig, StreamConfig]:
    if bundle is not None:
        if spec.model is not None and spec.model != bundle.model.name:
            raise DysinkError(f"RunSpec.model {spec.model} conflicts with bundle {bundle.path}, built for model "
                              f"{bundle.model.name!r}; drop RunSpec.model or use a bundle exported for it")
        if "bank_placement" in spec.explicit and spec.bank_placement != bundle.bank_placement or \
                spec.bank_placement != "device" and spec.bank_placement != bundle.bank_placement:
            raise DysinkError(f"RunSpec.bank_placement {spec.bank_placement} conflicts with bundle {bundle.path}, "
                              f"whose dit_step pools are sized for bank_placement {bundle.bank_placement}; drop it (a "
                              f"bundle fixes it at export) or export a bundle for it: dysink-export onnx ... "
                              f"--bank-placement {spec.bank_placement}")
        if spec.kv_cache_dtype not in ("auto", bundle.kv_cache_dtype):
            raise DysinkError(f"RunSpec.kv_cache_dtype {spec.kv_cache_dtype} conflicts with bundle {bundle.path}, whose "
                              f"dit_step reads {bundle.kv_cache_dtype} pages; drop it (a bundle fixes it at export) "
                              f"or export a bundle for it: dysink-export onnx ... --kv-cache-dtype {spec.kv_cache_dtype}")
        return bundle.model, bundle_stream_config(bundle, _settings(spec))
    if spec.model_config is not None:
        source = spec.model_config
        model = (model_config_from_file(os.fspath(source)) if isinstance(source, (str, os.PathLike))
                 else load_model_config(source))
    else:
        model = load_model_config(spec.model or "tiny")
    return model, stream_config_from_dict({"height": model.height, "width": model.width, **_settings(spec)})


def _switch_pairs(prompts, model: ModelConfig) -> list:
    out = []
    for item in prompts:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise DysinkError(f"prompts entries must be (frame, embeddings) pairs, got {item!r:.80}")
        check_switches([item[0]], 1, None)                    # an integer frame >= 0, before its file is read
        out.append((item[0], embeds_of(item[1], model)))
    return out


def _check_switches(switches: list, stream: StreamConfig, blocks: int, spec: RunSpec) -> None:
    """Against the run's length where it has one: an API stream given no blocks goes on as long as it
    is asked (dysink-run checks its default length itself)."""
    check_switches([frame for frame, _ in switches], stream.block_frames,
                   blocks if spec.blocks is not None or spec.seconds is not None else None)


def resolve_run(spec: RunSpec, bundle: Bundle | None = None) -> ResolvedRun:
    """Bundle, model, stream settings, blocks and prompts of `spec`, every check done (no backend).
    `bundle`: an already loaded Bundle of `spec.bundle` (the server loads it once)."""
    if spec.backend != "torch" and bundle is None:
        bundle = Bundle.load(spec.bundle)
    model, stream = _model_and_stream(spec, bundle)
    has_ckpt = (any(k != "random_seed" for k in bundle.manifest.get("checkpoints", {})) if bundle is not None
                else spec.has_checkpoints)
    blocks = (spec.blocks if spec.blocks is not None else
              blocks_for_seconds(spec.seconds, stream.block_frames) if spec.seconds is not None else DEFAULT_BLOCKS)
    if blocks > MAX_BLOCKS:       # --seconds with blocks of fewer than 3 latent frames
        raise DysinkError(f"RunSpec.seconds {spec.seconds:g} needs {blocks} blocks of {stream.block_frames} latent "
                          f"frame(s), more than {MAX_BLOCKS} ({BLOCKS_WHY})")
    encode = PromptEncoder(model, spec.tokenizer, spec.text_encoder, spec.text_encoder_preset, bundle)
    if (spec.prompt is not None or isinstance(spec.prompts, (str, os.PathLike))) and has_ckpt and spec.tokenizer \
            and not spec.text_encoder:
        raise DysinkError("real weights need the real text encoder: pass RunSpec.text_encoder "
                          "models_t5_umt5-xxl-enc-bf16.pth with RunSpec.tokenizer")
    initial = encode(spec.prompt) if spec.prompt is not None else None
    switches: list = []
    if isinstance(spec.prompts, (str, os.PathLike)):          # a schedule file; its frame 0 is the first prompt
        switches = load_prompt_schedule(os.fspath(spec.prompts), model, encode)
        _check_switches(switches, stream, blocks, spec)       # frame 0 included: a second one at 0 is refused
        if switches[0][0] == 0:
            if spec.prompt_embeds is not None:
                raise DysinkError("RunSpec.prompts sets the prompt of frame 0 and RunSpec.prompt_embeds does too; "
                                  "drop one")
            initial = switches.pop(0)[1]
    elif spec.prompts is not None:                            # (frame, embeddings) pairs: every one a switch
        switches = _switch_pairs(spec.prompts, model)
        _check_switches(switches, stream, blocks, spec)
    if switches and bundle is not None:
        bundle.require_interactive()
    if initial is None:
        if spec.prompt_embeds is not None:
            initial = embeds_of(spec.prompt_embeds, model)
        elif needs_real_prompt(model, has_ckpt):
            raise DysinkError("a real model needs real text conditioning: pass RunSpec.prompt_embeds "
                              f"FILE.safetensors (umT5-XXL output, [{model.dit.text_len}, {model.dit.text_dim}], an "
                              "array in Python) or RunSpec.prompt TEXT")
        else:
            initial = default_prompt_embeds(model)
    return ResolvedRun(spec, model, stream, blocks, initial, switches, bundle, has_ckpt)


def _available(spec: RunSpec) -> tuple[int | None, str]:
    """(free bytes, what) of the memory this run allocates in; None where it cannot be asked."""
    if spec.backend == "torch" and spec.device.startswith("cuda"):
        import torch    # lazy: torch (a CUDA device is a torch-backend path)

        return torch.cuda.mem_get_info(torch.device(spec.device))[0], spec.device
    if spec.backend == "onnxruntime" and spec.ort_provider == "cpu" or spec.backend == "torch":
        import psutil

        return psutil.virtual_memory().available, "this machine's memory"
    try:                # tensorrt / ORT on a GPU: cuda-python's runtime, when installed (no torch)
        from .backends.cuda import _cudart  # lazy: cuda-python only on GPU runs

        free = _cudart().cudaMemGetInfo()
        return (int(free[1]), "the GPU") if int(free[0]) == 0 else (None, "the GPU")
    except Exception:   # noqa: BLE001 (no cuda-python / no GPU: the backend's own allocation reports it)
        return None, "the GPU"


def check_memory(model: ModelConfig, stream: StreamConfig, precision: str, device: str | RunSpec) -> None:
    """Refuse, before allocating anything, a stream the device cannot hold (the planner's formulas:
    nothing is built). `device`: a RunSpec (any backend), or a torch device name."""
    spec = device if isinstance(device, RunSpec) else RunSpec(device=device)
    available, where = _available(spec)
    if available is None:
        return
    check_allocation(model, stream, precision, available, where, spec.kv_cache_dtype, spec.bank_placement,
                     scores=materialises_scores(spec))


def materialises_scores(spec: RunSpec) -> bool:
    """Does this backend's attention hold its float32 scores (plan.attention_scores_bytes)? The reference
    op does (torch on the CPU, or --kernels reference), and so does the ONNX function body ONNX Runtime
    runs; the Triton kernels and the TensorRT plugin do not."""
    if spec.backend == "torch":
        return spec.kernels == "reference" or spec.kernels == "auto" and not spec.device.startswith("cuda")
    return spec.backend == "onnxruntime"


def _torch_backend(run: ResolvedRun, models=None):
    import torch    # lazy: torch (the torch backend only)

    from ..models.dtypes import TORCH_DTYPES                        # lazy: torch
    from ..models.factory import CheckpointPaths, build_models     # lazy: torch
    from .backends.torch_backend import TorchBackend                # lazy: torch

    spec = run.spec
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise DysinkError("RunSpec.device cuda was asked for but torch sees no CUDA device; use RunSpec.device cpu")
    check_memory(run.model, run.stream, spec.precision, spec)
    if models is None:
        paths = CheckpointPaths(dit=spec.checkpoint, lora=spec.lora, vae=spec.vae, pe=spec.pe, use_ema=spec.use_ema)
        models = build_models(run.model, paths, seed=int(spec.weights_seed))
    backend = TorchBackend(models, run.stream, device=spec.device, dtype=TORCH_DTYPES[spec.precision],
                           kernels=spec.kernels, cuda_graph=spec.cuda_graph, kv_cache_dtype=spec.kv_cache_dtype)
    backend.threads = spec.threads      # applied in its thread_scope: not left set for the caller or other streams
    return backend


def _backend(run: ResolvedRun, sessions=None, models=None):
    spec, bundle = run.spec, run.bundle
    if spec.backend == "torch":
        backend = _torch_backend(run, models)
        return backend, {"precision": spec.precision, "device": spec.device, "kernels": backend.kernels,
                         "cuda_graph": spec.cuda_graph, "kv_cache_dtype": spec.kv_cache_dtype,
                         "checkpoints": spec.checkpoint_paths()}
    common = {"bundle": str(bundle.path), "precision": bundle.precision, "kv_cache_dtype": bundle.kv_cache_dtype}
    check_memory(run.model, run.stream, bundle.precision, dataclasses.replace(spec, kv_cache_dtype=bundle.kv_cache_dtype,
                                                                       bank_placement=bundle.bank_placement))
    if spec.backend == "onnxruntime":
        backend = OnnxRuntimeBackend(bundle, providers=spec.ort_provider, threads=spec.threads, sessions=sessions)
        return backend, {**common, "ort_provider": spec.ort_provider, "checkpoints": bundle.manifest.get("checkpoints", {})}
    backend = TensorRTBackend(bundle, cuda_graph=spec.cuda_graph)
    return backend, {**common, "cuda_graph": spec.cuda_graph,
                     "engines": {g: {k: e.get(k) for k in ("tensorrt_version", "compute_capability")}
                                 for g, e in bundle.manifest.get("engines", {}).items()},
                     "checkpoints": bundle.manifest.get("checkpoints", {})}


def open_streamer(spec: RunSpec, *, resolved: ResolvedRun | None = None, bundle: Bundle | None = None,
                  sessions=None, models=None, noise=None, features=None, observer=None) -> tuple[Streamer, dict]:
    """Open the stream `spec` describes -> (Streamer, run config: stats.json's `config`).

    resolved: `resolve_run(spec)` done already (its checks ran before some earlier step);
    bundle: the Bundle of `spec.bundle`, already loaded; sessions: ONNX Runtime sessions to share
    (OnnxRuntimeBackend.sessions of another stream of the same bundle); models: the torch
    backend's DySinkModels, already built (they are used as they are, not copied);
    noise / features / observer: the Streamer's injection hooks (see runtime.stream)."""
    run = resolved if resolved is not None else resolve_run(spec, bundle)
    backend, details = _backend(run, sessions, models)
    placement = run.bundle.bank_placement if run.bundle is not None else spec.bank_placement
    details["bank_placement"] = placement
    if placement == "host":        # the bank's pages in host memory, the device pool cut to its slots
        backend = HostBankBackend(backend, run.stream)
    try:
        streamer = Streamer(backend, run.model.dit, run.stream, run.prompt, seed=int(spec.seed),
                            prompts=run.switches, noise=noise, features=features, observer=observer,
                            pipeline=spec.pipeline)
    except BaseException:
        backend.close()
        raise
    prompt_source = (os.fspath(spec.prompt_embeds) if isinstance(spec.prompt_embeds, (str, os.PathLike))
                     else "array" if spec.prompt_embeds is not None else "embedded-default")
    run_config = {"model": run.model.name, "backend": spec.backend, "seed": int(spec.seed), "blocks": run.blocks,
                  **details, "pipeline": streamer.pipelines(), "prompt_embeds": prompt_source,
                  "prompts": os.fspath(spec.prompts) if isinstance(spec.prompts, (str, os.PathLike)) else None,
                  "stream": run.stream.to_dict(), "timesteps": run.stream.timesteps()}
    return streamer, run_config


def with_settings(spec: RunSpec, **settings) -> RunSpec:
    """`spec` with more stream settings (StreamConfig fields) on top of its own."""
    return dataclasses.replace(spec, settings={**spec.settings, **settings})
