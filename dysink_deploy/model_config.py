"""Model presets: the three networks + the resolution they stream at, read from presets or JSON.

Torch-free. `ModelConfig.from_dict` is strict (unknown, missing, mistyped fields refused by name): a
model configuration lists every field of DiTConfig, VAEConfig and PEConfig, as `to_dict` and a
bundle.json write them; none is defaulted (a DiT without `layers` is not the 1.3B's 30 layers).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError
from .jsonfile import read_json_object
from .model_parts import DIT_PRESETS, PE_PRESETS, VAE_PRESETS, DiTConfig, PEConfig, VAEConfig
from .stream_config import StreamConfig, stream_config_from_dict
from .validation import require, strict_from_dict, typed

__all__ = ["MODEL_PRESETS", "ModelConfig", "dumps", "model_config_from_dict", "model_config_from_file",
           "model_preset"]


def dumps(obj: Any) -> str:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True)


# ---------------------------------------------------------------------------
# Model presets: the three networks + the resolution they stream at by default
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    pe: PEConfig
    height: int
    width: int

    def __post_init__(self) -> None:
        require(self.dit.in_dim == self.vae.z_dim and self.dit.out_dim == self.vae.z_dim,
                f"ModelConfig {self.name!r}: DiTConfig.in_dim/out_dim ({self.dit.in_dim}/{self.dit.out_dim}) "
                f"must equal VAEConfig.z_dim ({self.vae.z_dim})")

    def default_stream(self, **overrides: Any) -> StreamConfig:
        """The released stream settings at this preset's resolution, with overrides."""
        values = {"height": self.height, "width": self.width, **overrides}
        return stream_config_from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model config") -> "ModelConfig":
        """Inverse of `to_dict`, strict: unknown, missing or mistyped fields are refused by name, and
        the values are validated with the presets' messages (a ConfigError naming `where`)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: ModelConfig must be a JSON object, got {type(data).__name__}")
        parts = {"dit": DiTConfig, "vae": VAEConfig, "pe": PEConfig}
        top = {k: v for k, v in data.items() if k not in parts}
        for key in ("name", "height", "width"):
            if key not in data:
                raise ConfigError(f"{where}: ModelConfig is missing field {key}")
        unknown = sorted(set(top) - {"name", "height", "width"})
        if unknown:
            raise ConfigError(f"{where}: ModelConfig has unknown field(s) {', '.join(unknown)}; "
                              "known: name, height, width, dit, vae, pe")
        if not isinstance(data["name"], str) or not data["name"]:
            raise ConfigError(f"{where}: ModelConfig.name must be a non-empty string, got {data['name']!r}")
        for key in ("height", "width"):
            if not typed(data[key], "int") or data[key] <= 0:
                raise ConfigError(f"{where}: ModelConfig.{key} must be a positive integer, got {data[key]!r}")
        for key, cls_ in parts.items():     # a misspelt field first, in any part: it explains a missing one
            known = [f.name for f in dataclasses.fields(cls_)]
            unknown = sorted(set(data.get(key) or ()) - set(known)) if isinstance(data.get(key), Mapping) else []
            if unknown:
                raise ConfigError(f"{where}: {cls_.__name__} has unknown field(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(known)}")
        built = {}
        for key, cls_ in parts.items():
            if key not in data:
                raise ConfigError(f"{where}: ModelConfig is missing field {key}")
            try:
                built[key] = strict_from_dict(cls_, data[key], where, optional=())   # no silent defaults
            except ConfigError as exc:
                text = str(exc)
                raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None
        try:
            return cls(name=data["name"], height=data["height"], width=data["width"], **built)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


MODEL_PRESETS = {
    "wan2.1-t2v-1.3b": ModelConfig("wan2.1-t2v-1.3b", DIT_PRESETS["wan2.1-t2v-1.3b"], VAE_PRESETS["wan2.1"],
                                   PE_PRESETS["pe-core-s16-384"], height=480, width=832),
    # Random weights, 64x96 pixels: a block in well under a second on a CPU core.
    "tiny": ModelConfig("tiny", DIT_PRESETS["tiny"], VAE_PRESETS["tiny"], PE_PRESETS["tiny"], height=64, width=96),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


def model_config_from_dict(data: dict) -> ModelConfig:
    """Inverse of `ModelConfig.to_dict` (bundle manifests)."""
    return ModelConfig.from_dict(data, where="bundle model config")


def model_config_from_file(path: str, what: str = "--model-config") -> ModelConfig:
    """A ModelConfig from a JSON file: a ModelConfig's `to_dict`, or a bundle.json (its model)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist or is not a file")
    data = read_json_object(path, what, 1 << 20, "model configuration")
    if "format_version" in data and isinstance(data.get("model"), dict):     # a bundle.json
        data = data["model"]
    return ModelConfig.from_dict(data, where=f"{what} {path!r}")
