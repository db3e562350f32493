"""`RunSpec`: everything that says how to open a stream, validated in one place.

Torch-free, file-light (it checks that named files exist, it reads none). Every way of starting
a stream (`dysink-run`, `api.open_stream`, `dysink-bench`, the Triton Inference Server model,
`dysink-export check`) fills one and hands it to `runtime.builder.open_streamer`. Messages name
the field as `RunSpec.<field>`; the CLIs print it as the flag (`--<field>`, see `FLAGS`).
CLI defaults and help texts are read from the fields' metadata (`spec_default`, `spec_help`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..config import MODEL_PRESETS
from ..errors import DysinkError
from ..graphs import BANK_PLACEMENTS, KV_CACHE_DTYPES, PRECISIONS  # noqa: F401 (BANK_PLACEMENTS: re-exported)
from ..limits import MAX_BLOCKS, MAX_SECONDS, MAX_THREADS, check_blocks, check_seconds, check_threads
from .backends import BACKENDS
from .backends.onnxruntime_backend import PROVIDERS

ORT_PROVIDERS = tuple(PROVIDERS)
KERNELS = ("auto", "triton", "reference")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
SEED_LIMIT = 2 ** 63
DEFAULT_BLOCKS = 12
CHECKPOINT_FIELDS = ("checkpoint", "lora", "vae", "pe")
# Fields that choose weights / precision / device of the torch reference: a bundle fixes all of them.
TORCH_ONLY = ("checkpoint", "lora", "vae", "pe", "use_ema", "weights_seed", "device", "precision", "kernels")
# Field -> command-line flag where the two are not spelled alike.
FLAGS = {"config_file": "--config"}


def flag_of(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _doc(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass(frozen=True)
class RunSpec:
    """How to open one stream. Only `backend` and its source (a bundle, or a model) matter for
    most runs; every other field has the CLI's default."""

    backend: str = field(default="torch", metadata=_doc(
        "torch: the PyTorch models; onnxruntime / tensorrt: a bundle's graphs / engines.", choices=BACKENDS))
    bundle: str | None = field(default=None, metadata=_doc("Bundle directory (from dysink-export onnx)."))
    model: str | None = field(default=None, metadata=_doc("Model preset"))
    model_config: Any = field(default=None, compare=False, metadata=_doc(
        "JSON file of a model configuration (a ModelConfig's fields, or a bundle.json whose model is used) "
        "instead of --model."))
    # -- weights (torch backend) ---------------------------------------------------------------
    checkpoint: str | None = field(default=None, metadata=_doc("DiT base: stage1_base.pt or .safetensors."))
    lora: str | None = field(default=None, metadata=_doc("stage2_lora.pt, merged into the DiT."))
    vae: str | None = field(default=None, metadata=_doc("Wan2.1_VAE.pth (its decoder is used)."))
    pe: str | None = field(default=None, metadata=_doc("PE-Core-S16-384.pt."))
    use_ema: bool = field(default=False, metadata=_doc("Use generator_ema instead of generator from the DiT "
                                                       "checkpoint."))
    weights_seed: int = field(default=0, metadata=_doc("Seed of the random weights used where no checkpoint is "
                                                       "given."))
    device: str = field(default="cpu", metadata=_doc("torch backend: cpu or cuda[:N]."))
    precision: str = field(default="fp32", metadata=_doc("Model precision.", choices=PRECISIONS))
    kernels: str = field(default="auto", metadata=_doc(
        "torch backend: custom ops as Triton kernels or PyTorch references (auto: triton on CUDA, reference "
        "on CPU).", choices=KERNELS))
    # -- bundle backends -------------------------------------------------------------------------
    ort_provider: str = field(default="cpu", metadata=_doc(
        "onnxruntime execution provider (cuda / tensorrt need onnxruntime-gpu).", choices=ORT_PROVIDERS))
    cuda_graph: bool = field(default=False, metadata=_doc(
        "tensorrt backend: replay engine launches as CUDA graphs (captured right after their second, uncaptured "
        "launch); torch backend on CUDA: replay each denoising step as one CUDA graph."))
    threads: int | None = field(default=None, metadata=_doc(
        f"CPU threads for torch and onnxruntime, 1..{MAX_THREADS} (pin it on a busy machine)."))
    pipeline: bool | None = field(default=None, metadata=_doc(
        "Decode block N's frames while block N+1 is made (each block is written one block later; the same "
        "frames and decisions). [default: where the backend gains from it: onnxruntime on 2+ CPU cores, "
        "feature mode block-alone]"))
    kv_cache_dtype: str = field(default="auto", metadata=_doc(
        "Storage of the K/V pages: auto (the model precision), bf16, fp8 (e4m3, with scales) or int8 (with "
        "scales); a bundle fixes it at export.", choices=KV_CACHE_DTYPES))
    bank_placement: str = field(default="device", metadata=_doc(
        "Where the memory bank's K/V pages live: device (the pool) or host (pinned host memory; the retrieved "
        "pages are copied into staging pages each block).", choices=BANK_PLACEMENTS))
    # -- the stream ------------------------------------------------------------------------------
    seed: int = field(default=0, metadata=_doc("Noise seed of the stream."))
    prompt: str | None = field(default=None, metadata=_doc(
        "The text prompt (cleaned and tokenized as the reference does)."))
    prompt_embeds: Any = field(default=None, compare=False, metadata=_doc(
        "umT5 output [512, 4096] in a .safetensors file (real checkpoints need it or --prompt). "
        "[default: the tiny demo's embedded prompt]"))
    prompts: Any = field(default=None, compare=False, metadata=_doc(
        'Prompt schedule: a JSON list of {"frame": F, "prompt": TEXT or "prompt_embeds": FILE} (latent '
        "frames); each switch recaches the bank and the window (a bundle needs --interactive)."))
    tokenizer: str | None = field(default=None, metadata=_doc(
        "The release's google/umt5-xxl folder (tokenizer.json)."))
    text_encoder: str | None = field(default=None, metadata=_doc("models_t5_umt5-xxl-enc-bf16.pth."))
    text_encoder_preset: str | None = field(default=None, metadata=_doc("umT5 encoder architecture."))
    config_file: str | None = field(default=None, metadata=_doc(
        "JSON file of stream settings (names as in stats.json's config.stream)."))
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)   # StreamConfig fields; beat the file
    blocks: int | None = field(default=None, metadata=_doc(
        f"Blocks to generate, 3 latent frames each (block 0 gives 9 video frames, later ones 12); at most {MAX_BLOCKS} "
        "a run (stats.json is rewritten after every block)."))
    seconds: float | None = field(default=None, metadata=_doc(
        f"Video length instead of --blocks, at 16 fps, rounded up to whole blocks; at most {MAX_SECONDS:.10g} s "
        f"({MAX_BLOCKS} blocks)."))
    # Fields the caller set on purpose (the CLI's flags given): a bundle refuses those that it fixes.
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self):
        if self.blocks is not None and self.seconds is not None:
            raise DysinkError("give RunSpec.blocks or RunSpec.seconds, not both")
        for name, what in (("seed", "noise seed"), ("weights_seed", "weights seed")):
            _check_seed(name, what, getattr(self, name))
        check_threads(self.threads, "RunSpec.threads")
        for name in ("use_ema", "cuda_graph"):     # a flag: 1 or "no" would pass as truthy and mean nothing
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise DysinkError(f"RunSpec.{name} must be True or False, got {getattr(self, name)!r}")
        if self.pipeline is not None and not isinstance(self.pipeline, (bool, np.bool_)):
            raise DysinkError(f"RunSpec.pipeline must be True, False or None (the backend decides), "
                              f"got {self.pipeline!r}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise DysinkError(f"RunSpec.device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.blocks is not None:
            check_blocks(self.blocks, "RunSpec.blocks")
        if self.seconds is not None:
            check_seconds(self.seconds, "RunSpec.seconds")
        for name in ("backend", "precision", "kernels", "ort_provider", "kv_cache_dtype", "bank_placement"):
            choices = _metadata(name)["choices"]
            if getattr(self, name) not in choices:
                raise DysinkError(f"RunSpec.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.settings, Mapping):
            raise DysinkError(f"settings must be a dict of stream settings or a StreamConfig, got "
                              f"{type(self.settings).__name__}")
        self._check_files()
        self._check_backend()
        if self.model is not None and self.model not in MODEL_PRESETS:
            raise DysinkError(f"RunSpec.model must be one of {', '.join(sorted(MODEL_PRESETS))}, got {self.model!r} "
                              "(another model: RunSpec.model_config)")
        if self.model is not None and self.model_config is not None:
            raise DysinkError("give RunSpec.model or RunSpec.model_config, not both")
        self._check_prompt_sources()

    # -- the checks, in the order the CLI has always reported them ---------------------------------
    def _check_files(self) -> None:
        paths = [(n, getattr(self, n)) for n in ("checkpoint", "lora", "vae", "pe", "prompt_embeds", "prompts",
                                                 "config_file", "text_encoder")]
        missing = [f"RunSpec.{n} {p}" for n, p in paths if isinstance(p, (str, os.PathLike)) and p
                   and not os.path.exists(p)]
        if missing:     # all of them at once, not one per run
            raise DysinkError(f"{'these files do' if len(missing) > 1 else 'this file does'} not exist: "
                              f"{'; '.join(missing)}")

    def _check_backend(self) -> None:
        backend = self.backend
        if backend == "torch" and self.bundle:
            raise DysinkError("RunSpec.bundle is read by RunSpec.backend onnxruntime and tensorrt only; drop it or "
                              "choose one of them")
        if backend != "onnxruntime" and "ort_provider" in self.explicit:
            raise DysinkError("RunSpec.ort_provider applies to RunSpec.backend onnxruntime only")
        if backend == "onnxruntime" and self.cuda_graph:
            raise DysinkError("RunSpec.cuda_graph applies to RunSpec.backend tensorrt and torch only")
        if backend == "torch" and self.cuda_graph and not self.device.startswith("cuda"):
            raise DysinkError("RunSpec.cuda_graph on RunSpec.backend torch needs RunSpec.device cuda (CUDA graphs "
                              "replay GPU launches)")
        if backend == "torch":
            return
        if not self.bundle:
            how = ("`dysink-export onnx` (e.g. dysink-export onnx --model tiny --precision fp32 --out bundles/tiny-fp32)"
                   if backend == "onnxruntime" else "`dysink-export onnx` + `dysink-export build` (its engines)")
            raise DysinkError(f"RunSpec.backend {backend} needs RunSpec.bundle DIR from {how} (Python: pass "
                              "bundle=DIR)")
        torch_flags = [f"RunSpec.{n}" for n in TORCH_ONLY
                       if n in self.explicit or (n in CHECKPOINT_FIELDS and getattr(self, n))]
        if torch_flags:
            raise DysinkError(f"{', '.join(torch_flags)}: torch-backend flag(s); a bundle already fixes the weights, "
                              "precision and device: drop the flag(s) or use RunSpec.backend torch")
        if self.model_config is not None:
            raise DysinkError("RunSpec.model_config: a bundle already fixes the model; drop it or use "
                              "RunSpec.backend torch")

    def _check_prompt_sources(self) -> None:
        if self.prompt is not None:
            if not isinstance(self.prompt, str):
                raise DysinkError(f"RunSpec.prompt must be text, got {type(self.prompt).__name__}")
            if self.prompt_embeds is not None or self.prompts is not None:
                raise DysinkError("give one of RunSpec.prompt, RunSpec.prompt_embeds and RunSpec.prompts")
        elif (self.text_encoder or self.tokenizer) and self.prompts is None:
            raise DysinkError("RunSpec.tokenizer / RunSpec.text_encoder encode text prompts: give RunSpec.prompt "
                              "TEXT (or RunSpec.prompts)")
        if self.prompts is not None and not isinstance(self.prompts, (str, os.PathLike, list, tuple)):
            raise DysinkError("prompts must be a list of (frame, embeddings) pairs or a schedule file")

    # -- derived ----------------------------------------------------------------------------------
    @property
    def has_checkpoints(self) -> bool:
        return any(getattr(self, n) for n in CHECKPOINT_FIELDS)

    def checkpoint_paths(self) -> dict:
        return {n: str(getattr(self, n)) for n in CHECKPOINT_FIELDS if getattr(self, n)}

    def replace(self, **changes) -> "RunSpec":
        return dataclasses.replace(self, **changes)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_seed(name: str, what: str, value) -> None:
    if not _is_int(value) or not 0 <= value < SEED_LIMIT:
        raise DysinkError(f"RunSpec.{name} must lie in 0..2**63-1 (the {what} must be an integer in that range), "
                          f"got {value!r}")


def _metadata(name: str) -> Mapping:
    return {f.name: f.metadata for f in dataclasses.fields(RunSpec)}[name]


def spec_help(name: str) -> str:
    """The help text of a RunSpec field (the CLIs' option help)."""
    return _metadata(name)["help"]


def spec_default(name: str):
    """The default of a RunSpec field (the CLIs' option default)."""
    f = {f.name: f for f in dataclasses.fields(RunSpec)}[name]
    return f.default


def spec_choices(name: str) -> tuple:
    return tuple(_metadata(name)["choices"])
