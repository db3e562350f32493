"""The graphs as torch modules: one wrapper per graph of `graphs.graph_specs`, and its sample inputs.

Each wrapper's positional inputs/outputs are exactly the contract's, in order, around the
reference model (`graph_module`; `text_encoder_graph` for the optional umt5_encoder).
`sample_inputs` gives seeded, plausible contract inputs: what the export traces with and what
the checks and tests feed both the modules and the exported files.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig, StreamConfig
from ..graphs import QUANTISED_KV_DTYPES, graph_specs
from ..models.dit import DiTStep, WindowRecache
from ..models.factory import DySinkModels
from ..models.umt5 import build_text_encoder, text_encoder_preset
from ..ops.kv_pages import quantise_page
from ..ops.retrieve_sinks import retrieve_sinks_node
from ..rope import rope_phases, timestep_frequencies

_SPEC_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "int8": torch.int8,
                "float8e4m3fn": torch.float8_e4m3fn}


# ---------------------------------------------------------------------------
# one wrapper module per graph: forward(*contract inputs) -> contract outputs
# ---------------------------------------------------------------------------
class TextEncoderGraph(nn.Module):
    """prompt_embeds [T, text_dim] float32 -> text_k, text_v [layers, T, H, D] (once per prompt)."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.dit = models.dit

    def forward(self, prompt_embeds):
        return self.dit.text_kv(prompt_embeds)


class DiTStepGraph(nn.Module):
    """The contract's flat inputs (x_t, t, t_freq, text_k, text_v, rope, k_pool_0.., v_pool_0.., local_ids,
    sink_ids) -> (x0, k_new, v_new, ratios), through `DiTStep`."""

    def __init__(self, models: DySinkModels, stream: StreamConfig, kv_cache_dtype: str = "auto"):
        super().__init__()
        self.step = DiTStep(models.dit, stream)
        self.layers = models.dit.cfg.layers
        self.quantised = kv_cache_dtype in QUANTISED_KV_DTYPES   # k_scale_i / v_scale_i after the pools

    def forward(self, x_t, t, t_freq, text_k, text_v, rope, *pools_and_ids):
        n = self.layers
        k_pools, v_pools = list(pools_and_ids[:n]), list(pools_and_ids[n:2 * n])
        scales = {}
        if self.quantised:
            scales = {"k_scales": list(pools_and_ids[2 * n:3 * n]), "v_scales": list(pools_and_ids[3 * n:4 * n])}
        local_ids, sink_ids = pools_and_ids[-2:]
        return self.step(x_t, t, text_k, text_v, rope, k_pools, v_pools, local_ids, sink_ids, t_freq=t_freq,
                         **scales)


class RecacheGraph(nn.Module):
    """(x, t, t_freq, text_k, text_v, rope, key_valid) -> (k, v) through `WindowRecache`."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.recache = WindowRecache(models.dit)

    def forward(self, x, t, t_freq, text_k, text_v, rope, key_valid):
        return self.recache(x, t, t_freq, text_k, text_v, rope, key_valid)


class TextEncoderGraphUMT5(nn.Module):
    """(ids [1, L], mask [1, L]) -> prompt_embeds [L, dim] through the umT5 encoder (float32)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids, mask):
        return self.encoder(ids, mask)[0].float()


def text_encoder_graph(record: dict) -> nn.Module:
    """The umt5_encoder graph's module from its manifest record (float32, like the reference)."""
    cfg = text_encoder_preset(record["preset"])
    return TextEncoderGraphUMT5(build_text_encoder(cfg, record.get("checkpoint"),
                                                   seed=int(record.get("random_seed", 0)))).eval()


class RetrieveGraph(nn.Module):
    """RetrieveSinks over the bank, sink_size and top_k of the stream config baked in."""

    def __init__(self, stream: StreamConfig):
        super().__init__()
        self.sink_size, self.k = stream.sink_size, stream.top_k

    def forward(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames):
        return retrieve_sinks_node(bank_feats, bank_start, queries, query_valid, current_start,
                                   window_frames, self.sink_size, self.k)


class VAEDecodeGraph(nn.Module):
    """(z [1, C, F, h, w], cache_0..) -> (frames, cache_out_0..); `first` applies Wan's first-frame rule
    and takes z alone (the stream starts from zero history)."""

    def __init__(self, models: DySinkModels, first: bool, layout: str = "channels"):
        super().__init__()
        self.vae, self.first, self.layout = models.vae, first, layout

    def forward(self, z, *cache):
        frames, new_cache = self.vae.decode_block(z, None if self.first else list(cache), self.first,
                                                  layout=self.layout)
        return (frames, *new_cache)


class MemoryEncoderGraph(nn.Module):
    """frames [1, 3, T, H, W] in [-1, 1] -> unit bank feature [1, F] float32 (PE-Core `block_feature`)."""

    def __init__(self, models: DySinkModels):
        super().__init__()
        self.pe = models.pe

    def forward(self, frames):
        return self.pe.block_feature(frames).float()


def graph_module(name: str, models: DySinkModels, stream: StreamConfig, kv_cache_dtype: str = "auto",
                 vae_layout: str = "channels") -> nn.Module:
    """The module exported as graph `name`; vae_layout (channels | frames) only shapes the VAE graphs' insides."""
    if name == "text_encoder":
        return TextEncoderGraph(models)
    if name == "dit_step":
        return DiTStepGraph(models, stream, kv_cache_dtype)
    if name == "retrieve":
        return RetrieveGraph(stream)
    if name == "dit_recache":
        return RecacheGraph(models)
    if name in ("vae_decode_first", "vae_decode"):
        return VAEDecodeGraph(models, first=(name == "vae_decode_first"), layout=vae_layout)
    if name.startswith("memory_encoder_t"):
        return MemoryEncoderGraph(models)
    raise KeyError(name)


# ---------------------------------------------------------------------------
# sample inputs (export tracing, tests, checks)
# ---------------------------------------------------------------------------
def sample_inputs(name: str, model: ModelConfig, stream: StreamConfig, precision: str,
                  seed: int = 0, kv_cache_dtype: str = "auto", bank_placement: str = "device") -> list[Tensor]:
    """Plausible inputs for graph `name`, in contract order (seeded).

    Page ids: half the local slots and every sink slot hold distinct valid
    pages, the rest -1; bank: a third of the slots empty; RoPE: the real
    phases of a block at frame 9.
    """
    extra = (int(name[len("memory_encoder_t"):]),) if name.startswith("memory_encoder_t") else ()
    spec = graph_specs(model, stream, precision, extra, interactive=(name == "dit_recache"),
                       text_encoder=(name == "umt5_encoder"), kv_cache_dtype=kv_cache_dtype,
                       bank_placement=bank_placement)[name]
    g = torch.Generator().manual_seed(seed)
    d = model.dit
    pages = torch.randperm(spec.input("k_pool_0").shape[0] if name == "dit_step" else stream.pool_pages, generator=g)
    out: list[Tensor] = []
    for t in spec.inputs:
        dtype = _SPEC_DTYPES[t.dtype]
        recache = name == "dit_recache"        # its t is 0 (context_noise), its frames a whole window
        step = 0.0 if recache else stream.timesteps()[min(1, len(stream.timesteps()) - 1)]
        if t.name == "t":
            x = torch.tensor(step, dtype=torch.float32)
        elif t.name == "t_freq":
            x = torch.from_numpy(timestep_frequencies(step, d.freq_dim))
        elif t.name == "rope":
            lat_h, lat_w = stream.latent_hw
            frames = stream.window_frames(0) if recache else stream.block_frames
            x = torch.from_numpy(rope_phases(d, 9, frames, lat_h // d.patch[1], lat_w // d.patch[2]))
        elif name == "umt5_encoder" and t.name in ("ids", "mask"):   # 77 tokens, then padding
            valid = torch.arange(t.shape[1]) < min(77, t.shape[1])
            x = (torch.randint(2, 100, t.shape, generator=g) * valid if t.name == "ids" else valid[None].long())
        elif t.name == "key_valid":                   # the first two thirds valid, the rest padding
            per_frame = t.shape[0] // stream.window_frames(0)
            valid = (2 * stream.window_frames(0) // 3) // stream.block_frames * stream.block_frames
            x = torch.arange(t.shape[0]) < valid * per_frame
        elif t.name == "local_ids":
            n = t.shape[0]
            x = torch.cat([pages[:(n + 1) // 2], torch.full((n - (n + 1) // 2,), -1)]).to(dtype)
        elif t.name == "sink_ids":
            x = pages[-t.shape[0]:].to(dtype) if t.shape[0] else torch.zeros(0, dtype=dtype)
        elif t.name == "bank_start":
            c = t.shape[0]
            starts = torch.randperm(max(c, 12), generator=g)[:c] * stream.block_frames
            x = torch.where(torch.rand(c, generator=g) < 1 / 3, torch.full_like(starts, -1), starts)
        elif t.name in ("bank_feats", "queries"):
            x = torch.nn.functional.normalize(torch.randn(t.shape, generator=g), dim=-1)
        elif t.name == "query_valid":                 # int32: 1 valid, 0 not; the last slot empty
            x = (torch.arange(t.shape[0]) < max(1, t.shape[0] - 1)).to(dtype)
        elif t.name == "current_start":
            x = torch.tensor(12 * stream.block_frames, dtype=dtype)
        elif t.name == "window_frames":
            x = torch.tensor(stream.window_frames(1), dtype=dtype)
        elif t.name == "frames":
            x = torch.rand(t.shape, generator=g) * 2 - 1
        elif t.name.startswith(("k_pool_", "v_pool_")) and dtype in (torch.int8, torch.float8_e4m3fn):
            x = quantise_page(torch.randn(t.shape, generator=g), kv_cache_dtype)[0]   # its scales follow
        elif t.name.startswith(("k_scale_", "v_scale_")):
            x = quantise_page(torch.randn(t.shape + (model.dit.head_dim,), generator=g), kv_cache_dtype)[1]
        else:
            x = torch.randn(t.shape, generator=g)
            if t.name.startswith("cache_"):
                x = 0.5 * x
        out.append(x.to(dtype))
    return out


__all__ = ["graph_module", "sample_inputs", "text_encoder_graph"]
