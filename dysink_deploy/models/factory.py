"""Build the three networks of a preset, optionally from checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import checkpoints as ck
from ..config import ModelConfig
from .dit import CausalWanDiT
from .pe_core import PECoreVisionEncoder
from .seeding import seeded
from .vae import WanVAEDecoder


class DySinkModels(nn.Module):
    """The DiT, the VAE decoder and the PE-Core memory encoder of one preset."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dit = CausalWanDiT(cfg.dit)
        self.vae = WanVAEDecoder(cfg.vae)
        self.pe = PECoreVisionEncoder(cfg.pe)


@dataclass
class CheckpointPaths:
    dit: str | None = None
    lora: str | None = None
    vae: str | None = None
    pe: str | None = None
    use_ema: bool = False

    def any(self) -> bool:
        return any((self.dit, self.lora, self.vae, self.pe))


def _randomize_zero_inits(module: nn.Module, generator: torch.Generator) -> None:
    """Wan zero-initialises some projections; a random demo model should not be degenerate."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / p.shape[-1]) ** 0.5)


def build_models(cfg: ModelConfig, checkpoints: CheckpointPaths | None = None, seed: int = 0) -> DySinkModels:
    """Random weights from `seed` (the embedded default), then whatever checkpoints are given.

    A DiT-only checkpoint leaves the VAE and encoder random: that is allowed
    for experiments but makes frames meaningless, so the CLI warns about it.
    """
    with seeded(seed):              # not torch.manual_seed: streams built in threads at once race on it
        models = DySinkModels(cfg)
    _randomize_zero_inits(models, torch.Generator().manual_seed(seed + 1))
    paths = checkpoints or CheckpointPaths()
    if paths.lora and not paths.dit:
        raise ck.CheckpointError("--lora needs the base DiT checkpoint too (--checkpoint stage1_base.pt)")
    if paths.dit:
        state = ck.dit_state_dict(paths.dit, use_ema=paths.use_ema)
        if paths.lora:
            # Merge before loading, in float32, like the reference (one rounding).
            ck.load_into(models.dit, state, "DiT", paths.dit)  # validates the base first
            state = ck.merge_lora(models.dit.state_dict(), paths.lora, cfg.dit.lora_rank, cfg.dit.lora_alpha)
        ck.load_into(models.dit, state, "DiT", paths.dit)
    if paths.vae:
        ck.load_into(models.vae, ck.vae_state_dict(paths.vae), "VAE decoder", paths.vae)
    if paths.pe:
        ck.load_into(models.pe, ck.pe_state_dict(paths.pe), "PE-Core encoder", paths.pe)
    return models.eval()
