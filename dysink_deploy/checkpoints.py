"""Loading the released checkpoints into our modules.

Formats (ALGORITHM.md section 1):
- DiT base `stage1_base.pt`: a dict with `generator` and/or `generator_ema`,
  keys prefixed `model.` and sometimes containing `_fsdp_wrapped_module.`;
  also accepted: a plain state dict, or a .safetensors file.
- `stage2_lora.pt`: a dict with `generator_lora`, PEFT keys such as
  `base_model.model.blocks.0.self_attn.q.lora_A.weight` [r, in] and
  `...lora_B.weight` [out, r]; merged as W += alpha / rank * B @ A
  (rank and alpha come from the config: the file does not store them).
- `Wan2.1_VAE.pth`: a plain state dict of the whole VAE (we keep the decoder).
- `PE-Core-S16-384.pt`: tensors under `state_dict` / `weights` or at top level,
  keys prefixed `module.` or `visual.` (CLIP-style files).
Every `torch.load` uses weights_only=True: checkpoints are data, not code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .errors import DysinkError


class CheckpointError(DysinkError):
    pass


def load_tensor_file(path: str | os.PathLike, what: str) -> dict:
    """Read a .pt/.pth (weights_only) or .safetensors file; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint {str(p)!r} does not exist or is not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p), device="cpu")
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt, truncated, pickled code, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read {what} checkpoint {str(p)!r} ({first[:200]}); expected a PyTorch state-dict "
            "file saved with tensors only, or .safetensors") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} checkpoint {str(p)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _tensors_only(state: Mapping, what: str, path: str) -> dict[str, Tensor]:
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{what} checkpoint {path!r} contains no tensors at the expected place")
    return tensors


def _strip_dit_key(key: str) -> str:
    key = key.replace("_fsdp_wrapped_module.", "")
    for prefix in ("module.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def dit_state_dict(path: str, use_ema: bool = False) -> dict[str, Tensor]:
    """The DiT weights of a stage1 file (or a plain / safetensors state dict)."""
    obj = load_tensor_file(path, "DiT")
    if "generator" in obj or "generator_ema" in obj:
        key = "generator_ema" if use_ema else "generator"
        if key not in obj:
            other = "generator" if use_ema else "generator_ema"
            raise CheckpointError(f"DiT checkpoint {path!r} has no {key!r} entry (it has {other!r}); "
                                  f"{'drop' if use_ema else 'pass'} --use-ema")
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"DiT checkpoint {path!r}: {key!r} is not a state dict")
    return {_strip_dit_key(k): v for k, v in _tensors_only(obj, "DiT", path).items()}


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


def merge_lora(state: dict[str, Tensor], path: str, rank: int, alpha: float) -> dict[str, Tensor]:
    """Merge a PEFT LoRA file into a DiT state dict (returns a new dict)."""
    obj = load_tensor_file(path, "LoRA")
    lora = obj.get("generator_lora", obj)
    if not isinstance(lora, Mapping):
        raise CheckpointError(f"LoRA checkpoint {path!r}: 'generator_lora' is not a state dict")
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in _tensors_only(lora, "LoRA", path).items():
        m = _LORA_KEY.match(key.replace("_fsdp_wrapped_module.", ""))
        if not m:
            raise CheckpointError(f"LoRA checkpoint {path!r}: unexpected key {key!r}; expected PEFT keys "
                                  "like base_model.model.blocks.0.self_attn.q.lora_A.weight")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value
    merged = dict(state)
    scale = alpha / rank
    for target, ab in sorted(pairs.items()):
        wkey = f"{target}.weight"
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"LoRA checkpoint {path!r}: {target} has only lora_{''.join(ab)}")
        if wkey not in merged:
            raise CheckpointError(f"LoRA checkpoint {path!r} targets {wkey!r}, which the base model does not have")
        a, b, w = ab["A"].float(), ab["B"].float(), merged[wkey]
        if a.shape[0] != rank or b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"LoRA checkpoint {path!r}: {target} has A {tuple(a.shape)} and B {tuple(b.shape)}, expected "
                f"A [{rank}, {w.shape[1]}] and B [{w.shape[0]}, {rank}] (rank {rank} from the model config)")
        merged[wkey] = (w.float() + scale * (b @ a)).to(w.dtype)
    return merged


def vae_state_dict(path: str) -> dict[str, Tensor]:
    from .models.vae import decoder_state_dict_from_wan
    obj = load_tensor_file(path, "VAE")
    return decoder_state_dict_from_wan(_tensors_only(obj.get("state_dict", obj), "VAE", path))


def pe_state_dict(path: str) -> dict[str, Tensor]:
    from .models.pe_core import vision_state_dict
    obj = load_tensor_file(path, "PE-Core")
    for key in ("state_dict", "weights"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    return vision_state_dict(_tensors_only(obj, "PE-Core", path))


@dataclass
class KeyReport:
    """Differences between a checkpoint and a module's parameters."""

    what: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file [..] vs model [..]"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self) -> list[str]:
        out = [f"missing     {self.what}: {k}" for k in self.missing]
        out += [f"unexpected  {self.what}: {k}" for k in self.unexpected]
        out += [f"mis-shaped  {self.what}: {k}" for k in self.mismatched]
        return out

    def summary(self) -> str:
        return (f"{self.what}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} mis-shaped keys")


def compare_keys(module: nn.Module, state: Mapping[str, Tensor], what: str) -> KeyReport:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    report = KeyReport(what)
    report.missing = sorted(set(expected) - set(state))
    report.unexpected = sorted(set(state) - set(expected))
    for k in sorted(set(expected) & set(state)):
        if tuple(state[k].shape) != expected[k]:
            report.mismatched.append(f"{k}: file {list(state[k].shape)} vs model {list(expected[k])}")
    return report


def load_into(module: nn.Module, state: Mapping[str, Tensor], what: str, path: str) -> None:
    """Strict load; on any difference raise one line naming the first few problems."""
    report = compare_keys(module, state, what)
    if not report.ok:
        first = "; ".join(report.lines()[:3])
        raise CheckpointError(f"{path!r} does not match the {what} of this model preset ({report.summary()}: "
                              f"{first}); check --model, or run `dysink-export verify-checkpoint` for the full list")
    module.load_state_dict(state, strict=True)
