"""The stable import location of the configuration: `from dysink_deploy.config import StreamConfig`.

Re-exports only. The dataclasses live in `model_parts` (DiT / VAE / PE and their presets),
`stream_config` (StreamConfig, the reference scheduler's table) and `model_config` (ModelConfig,
the model presets, reading one from JSON); their shared field checks are in `validation`.
"""

from __future__ import annotations

from .model_config import (MODEL_PRESETS, ModelConfig, dumps, model_config_from_dict, model_config_from_file,
                           model_preset)
from .model_parts import (DIT_PRESETS, PE_PRESETS, POOL_TYPES, VAE_PRESETS, WAN21_LATENT_MEAN, WAN21_LATENT_STD,
                          DiTConfig, PEConfig, VAEConfig)
from .stream_config import EVICTION_RULES, FEATURE_MODES, StreamConfig, flow_match_table, stream_config_from_dict

__all__ = [
    # model_parts
    "DIT_PRESETS", "DiTConfig", "PEConfig", "PE_PRESETS", "POOL_TYPES", "VAEConfig", "VAE_PRESETS",
    "WAN21_LATENT_MEAN", "WAN21_LATENT_STD",
    # stream_config
    "EVICTION_RULES", "FEATURE_MODES", "StreamConfig", "flow_match_table", "stream_config_from_dict",
    # model_config
    "MODEL_PRESETS", "ModelConfig", "dumps", "model_config_from_dict", "model_config_from_file", "model_preset",
]
