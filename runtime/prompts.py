"""Prompt conditioning of a stream: the embedded demo prompt, embeddings files, prompt schedules,
and text encoding (a bundle's umt5_encoder graph without torch, else the PyTorch umT5 encoder)."""

from __future__ import annotations

import os

import numpy as np

from ..errors import DysinkError
from ..jsonfile import read_json
from ..text import PromptTokenizer
from ..config import MODEL_PRESETS, ModelConfig
from .backends.onnxruntime_backend import _ort, load_session, session_options


def default_prompt_embeds(cfg: ModelConfig, seed: int = 1234) -> np.ndarray:
    """The embedded default 'prompt' of the demo: fixed pseudo-random umT5-like rows.

    Only meaningful for random-weight demo models; a real model needs real
    umT5 embeddings (--prompt-embeds).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    emb = (rng.standard_normal((cfg.dit.text_len, cfg.dit.text_dim)) * 0.2).astype(np.float32)
    emb[cfg.dit.text_len // 4:] = 0.0  # umT5 outputs are zero past the prompt's tokens
    return emb


def load_prompt_embeds(path: str, cfg: ModelConfig) -> np.ndarray:
    """A .safetensors file holding exactly one float tensor [text_len, text_dim] (or [1, ...])."""
    if not os.path.isfile(path):
        raise DysinkError(f"--prompt-embeds {path!r} does not exist or is not a file")
    if not path.endswith(".safetensors"):
        raise DysinkError(f"--prompt-embeds {path!r} must be a .safetensors file holding one [{cfg.dit.text_len}, "
                          f"{cfg.dit.text_dim}] umT5 output tensor")
    try:
        from safetensors.numpy import load_file
        tensors = load_file(path)
    except Exception as exc:
        raise DysinkError(f"cannot read --prompt-embeds {path!r} ({str(exc).splitlines()[0][:160]}); "
                          "it must be a valid .safetensors file") from None
    if len(tensors) != 1:
        raise DysinkError(f"--prompt-embeds {path!r} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
                          "expected exactly one")
    (name, arr), = tensors.items()
    want = (cfg.dit.text_len, cfg.dit.text_dim)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != want:
        raise DysinkError(f"--prompt-embeds tensor {name!r} has shape {list(arr.shape)}, expected {list(want)} "
                          "(umT5-XXL output, padded to 512 tokens)")
    if arr.dtype.kind != "f":
        raise DysinkError(f"--prompt-embeds tensor {name!r} has dtype {arr.dtype}, expected a float dtype "
                          "(float32, float16 or bfloat16)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DysinkError(f"--prompt-embeds tensor {name!r} contains NaN or Inf values")
    return arr


def load_prompt_schedule(path: str, cfg: ModelConfig, encode=None) -> list[tuple[int, np.ndarray]]:
    """--prompts FILE.json: [{"frame": F, "prompt_embeds": "x.safetensors"} or {"frame": F, "prompt":
    "text"}, ...], frames in latent frames, non-decreasing; embeddings files relative to the
    schedule's folder; text through `encode(text) -> embeddings`. -> [(frame, embeds)]."""
    data = read_json(path, "--prompts", 1 << 20, "prompt schedule")
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if not isinstance(data, list) or not data:
        raise DysinkError(f"--prompts {path!r} must hold a non-empty JSON list of "
                          '{"frame": N, "prompt_embeds": "FILE.safetensors"} entries')
    out: list[tuple[int, np.ndarray]] = []
    folder = os.path.dirname(os.path.abspath(path))
    for i, entry in enumerate(data):
        where = f"--prompts {path!r} entry {i}"
        if not isinstance(entry, dict):
            raise DysinkError(f"{where} must be an object with frame and prompt_embeds")
        unknown = sorted(set(entry) - {"frame", "prompt_embeds", "prompt"})
        if unknown:
            raise DysinkError(f"{where} has unknown key(s) {', '.join(unknown)}; use frame and prompt_embeds")
        frame = entry.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise DysinkError(f"{where}: frame must be an integer >= 0 (a latent frame), got {frame!r}")
        if out and frame < out[-1][0]:
            raise DysinkError(f"{where}: frames must not decrease ({frame} after {out[-1][0]})")
        if ("prompt" in entry) == ("prompt_embeds" in entry):
            raise DysinkError(f"{where} needs exactly one of prompt (text) and prompt_embeds (a .safetensors file)")
        if "prompt" in entry:
            if not isinstance(entry["prompt"], str):
                raise DysinkError(f"{where}: prompt must be text, got {entry['prompt']!r}")
            if encode is None:
                raise DysinkError(f"{where}: a text prompt needs --tokenizer DIR (and --text-encoder for real weights)")
            out.append((frame, encode(entry["prompt"])))
            continue
        file = entry.get("prompt_embeds")
        if not isinstance(file, str) or not file:
            raise DysinkError(f"{where}: prompt_embeds must be a .safetensors file name, got {file!r}")
        out.append((frame, load_prompt_embeds(os.path.join(folder, file), cfg)))
    return out


def switch_block(frame: int, block_frames: int) -> int:
    """The block whose top applies a switch at latent `frame`: the first block starting at or after
    it (runtime.stream), ceil(frame / block_frames)."""
    return -(-frame // block_frames)


def check_switches(frames, block_frames: int, blocks: int | None, where: str = "RunSpec.prompts") -> None:
    """Prompt switch frames checked against the run: integers >= 0, each in a block of its own (a block
    applies one switch: a second one in the same block would slip to the next block), and none past the
    last of `blocks` blocks (it would never apply); None: a stream with no set length."""
    seen: dict[int, int] = {}
    for frame in frames:
        if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool) or frame < 0:
            raise DysinkError(f"{where}: a switch frame must be an integer >= 0 (a latent frame), got {frame!r}")
        block = switch_block(int(frame), block_frames)
        if block in seen:
            raise DysinkError(
                f"{where}: the switches at latent frames {seen[block]} and {frame} both fall in block {block} (a "
                f"switch applies at the first block starting at or after its frame; block {block} starts at frame "
                f"{block * block_frames}) and a block takes one prompt: drop one, or move it to another block's first "
                f"frame (a multiple of {block_frames})")
        seen[block] = int(frame)
        if blocks is not None and block >= blocks:
            raise DysinkError(
                f"{where}: the switch at latent frame {frame} would apply at block {block}, past the run's last block "
                f"{blocks - 1} ({blocks} blocks: latent frames 0..{blocks * block_frames - 1}); give RunSpec.blocks "
                f"{block + 1} or more, or an earlier frame")


def needs_real_prompt(model: ModelConfig, has_checkpoints: bool) -> bool:
    """The embedded default prompt is for random weights only: not with checkpoints, nor for the
    released presets other than tiny (a custom --model-config with random weights may use it)."""
    return has_checkpoints or (model.name in MODEL_PRESETS and model.name != "tiny")


def embeds_array(value, cfg: ModelConfig, field: str = "prompt_embeds") -> np.ndarray:
    """Embeddings given as an array: float [text_len, text_dim], finite -> float32."""
    array = np.asarray(value)
    want = (cfg.dit.text_len, cfg.dit.text_dim)
    if array.shape != want or not np.issubdtype(array.dtype, np.floating):
        raise DysinkError(f"RunSpec.{field} must be a float array of shape {want}, got {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise DysinkError(f"RunSpec.{field} hold NaN or Inf values")
    return np.ascontiguousarray(array, dtype=np.float32)


def embeds_of(value, cfg: ModelConfig, field: str = "prompt_embeds") -> np.ndarray:
    """Embeddings from a .safetensors file name or an array."""
    if isinstance(value, (str, os.PathLike)):
        return load_prompt_embeds(os.fspath(value), cfg)
    return embeds_array(value, cfg, field)


def encode_with_torch(prompt: str, tokenizer: str | None, text_encoder: str | None, preset: str | None,
                      device: str = "cpu", text_dim: int | None = None) -> np.ndarray:
    """Embeddings of one prompt by the PyTorch umT5 encoder, for a model whose text width is
    `text_dim` (one-line errors)."""
    if not tokenizer:
        raise DysinkError("a text prompt needs --tokenizer DIR (the release's google/umt5-xxl folder)")
    try:
        from ..models.umt5 import encode_prompt, text_encoder_preset   # lazy: torch
    except ImportError:
        raise DysinkError("encoding a prompt runs the umT5 encoder in PyTorch: pip install 'dysink-deploy[torch]' "
                          "(or encode elsewhere with dysink-export encode-prompt and pass --prompt-embeds)") from None
    preset = preset or ("umt5-xxl" if text_encoder else "tiny")
    if text_dim is not None and text_encoder_preset(preset).dim != text_dim:
        raise DysinkError(f"the {preset} text encoder gives width {text_encoder_preset(preset).dim}, the model "
                          f"reads {text_dim}; use the matching --text-encoder-preset")
    return encode_prompt(prompt, tokenizer, text_encoder, preset=preset, device=device)


class PromptEncoder:
    """Text -> embeddings for one run: the bundle's umt5_encoder graph (no torch) when it has one,
    else the PyTorch encoder. One session and one tokenizer serve every prompt of the run."""

    def __init__(self, model: ModelConfig, tokenizer: str | None, text_encoder: str | None = None,
                 preset: str | None = None, bundle=None):
        self.model, self.tokenizer, self.text_encoder, self.preset = model, tokenizer, text_encoder, preset
        self.bundle = bundle if bundle is not None and bundle.text_encoder is not None else None
        self._session = self._tok = None

    def __call__(self, text: str) -> np.ndarray:
        if self.bundle is None:
            return encode_with_torch(text, self.tokenizer, self.text_encoder, self.preset,
                                     text_dim=self.model.dit.text_dim)
        if self.text_encoder or self.preset:
            raise DysinkError(f"bundle {self.bundle.path} holds its text encoder ({self.bundle.text_encoder['preset']}); "
                              "drop --text-encoder / --text-encoder-preset")
        if not self.tokenizer:
            raise DysinkError("a text prompt needs --tokenizer DIR (the release's google/umt5-xxl folder)")
        if self._session is None:
            ort = _ort()
            self._session = load_session(ort, self.bundle, "umt5_encoder",
                                         str(self.bundle.graph_path("umt5_encoder")), session_options(ort),
                                         ("CPUExecutionProvider",))
            self._tok = PromptTokenizer(self.tokenizer)
        ids, mask = self._tok(text)
        (out,) = self._session.run(["prompt_embeds"], {"ids": ids[None], "mask": mask[None]})
        return np.asarray(out, dtype=np.float32)
