"""Synthetic checkpoints in the exact layouts of the released DySink files.

Built from the tiny preset's own modules, so their tensors are known and the
tests can check that loading gives back exactly what was saved. Layouts
(ALGORITHM.md section 1):
- stage1_base.pt: {"generator": {"model.<param>": t}, "generator_ema": {...}};
  FSDP saves carry `_fsdp_wrapped_module.` inside the keys.
- stage2_lora.pt: {"generator_lora": PEFT state}. The key naming was checked
  against peft 0.21's get_peft_model_state_dict on a module with the same
  block layout: `base_model.model.blocks.{i}.self_attn.q.lora_A.weight`
  [r, in] then `...lora_B.weight` [out, r], one pair per targeted Linear,
  adapter name dropped, no bias entries.
- Wan2.1_VAE.pth: plain state dict of the WHOLE VAE (encoder keys included).
- PE-Core: tensors at top level or under state_dict / weights, prefixed
  `module.` or, CLIP-style, `visual.` next to a text tower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dysink_deploy.config import MODEL_PRESETS
from dysink_deploy.models.factory import DySinkModels, build_models

TINY = MODEL_PRESETS["tiny"]
FULL = MODEL_PRESETS["wan2.1-t2v-1.3b"]


def tiny_models(seed: int = 0) -> DySinkModels:
    return build_models(TINY, seed=seed)


def state_of(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy, so later changes to the module do not alter the 'saved' tensors."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def randomized(state: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Same keys and shapes, new values: tells generator from generator_ema."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype) for k, v in state.items()}


def fsdp_key(key: str) -> str:
    """`blocks.3.self_attn.q.weight` -> `model.blocks.3._fsdp_wrapped_module.self_attn.q.weight`:
    each block wrapped on its own, as FSDP auto-wrapping does; other keys keep `model.`."""
    parts = key.split(".")
    if parts[0] == "blocks":
        return ".".join(["model", "blocks", parts[1], "_fsdp_wrapped_module", *parts[2:]])
    return "model." + key


def stage1_obj(generator: dict | None = None, ema: dict | None = None, fsdp_ema: bool = False) -> dict:
    obj = {}
    if generator is not None:
        obj["generator"] = {"model." + k: v for k, v in generator.items()}
    if ema is not None:
        obj["generator_ema"] = {(fsdp_key(k) if fsdp_ema else "model." + k): v for k, v in ema.items()}
    return obj


def linear_targets(dit: nn.Module) -> list[str]:
    return [n for n, m in dit.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]


def peft_lora(dit: nn.Module, rank: int, seed: int = 0, targets: list[str] | None = None,
              b_scale: float = 0.1) -> dict[str, Tensor]:
    """A PEFT LoRA state dict for `dit` (B is non-zero, unlike a fresh PEFT init,
    so merging visibly changes the weights)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(dit.named_modules())
    out: dict[str, Tensor] = {}
    for name in targets if targets is not None else linear_targets(dit):
        lin = modules[name]
        out[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) * 0.1
        out[f"base_model.model.{name}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * b_scale
    return out


# Encoder-side entries of the full Wan VAE file that the decoder must drop.
FAKE_ENCODER_KEYS = ("encoder.conv1.weight", "encoder.conv1.bias", "encoder.head.0.gamma", "conv1.weight",
                     "conv1.bias")


def full_vae_obj(decoder_state: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    obj = {k: torch.randn(5, 3, generator=g) for k in FAKE_ENCODER_KEYS}
    obj.update(decoder_state)
    return obj


PE_LAYOUTS = ("top", "state_dict", "weights", "module", "visual", "weights+module.visual")


def pe_obj(vision_state: dict[str, Tensor], layout: str) -> dict:
    """A PE-Core file in one of PE_LAYOUTS. The CLIP-style ones also hold a text
    tower whose names overlap the vision tower's, so a wrong filter would show."""
    if layout in ("top", "state_dict", "weights"):
        state = dict(vision_state)
        return state if layout == "top" else {layout: state, "epoch": 3}
    if layout == "module":
        return {"state_dict": {"module." + k: v for k, v in vision_state.items()}}
    text_tower = {"transformer.resblocks.0.ln_1.weight": torch.ones(7), "token_embedding.weight": torch.ones(9, 7),
                  "logit_scale": torch.tensor(4.6)}
    state = {**text_tower, **{"visual." + k: v for k, v in vision_state.items()}}
    if layout == "visual":
        return state
    assert layout == "weights+module.visual", layout
    return {"weights": {"module." + k: v for k, v in state.items()}}


def save(obj, path: Path) -> Path:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, str(path))
    return path


def write_tiny_set(dirpath: Path, seed: int = 0) -> dict:
    """A complete, matching set of tiny files; returns paths and what was saved."""
    dirpath = Path(dirpath)
    src = tiny_models(seed)
    gen = state_of(src.dit)
    ema = randomized(gen, seed + 100)
    lora = peft_lora(src.dit, TINY.dit.lora_rank, seed + 200)
    vae = state_of(src.vae)
    pe = state_of(src.pe)
    return {
        "dit": save(stage1_obj(gen, ema, fsdp_ema=True), dirpath / "stage1_base.pt"),
        "lora": save({"generator_lora": lora}, dirpath / "stage2_lora.pt"),
        "vae": save(full_vae_obj(vae, seed), dirpath / "Wan2.1_VAE.pth"),
        "pe": save(pe_obj(pe, "weights+module.visual"), dirpath / "PE-Core-S16-384.pt"),
        "states": {"generator": gen, "generator_ema": ema, "lora": lora, "vae": vae, "pe": pe},
    }
