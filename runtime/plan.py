"""Memory planner: what one stream needs on the device, and the largest bank that fits.

    dysink-export plan --model wan2.1-t2v-1.3b --precision bf16 --memory 64GB

Exact figures (from the configs and the graph contract): K/V bytes per page (one
block's clean-pass K and V in every layer), pool pages, cross-attention text K/V,
the VAE decoder's streaming cache, the bank features, and the weights of every
network (parameters counted on PyTorch's meta device: no memory, no checkpoint).
Estimates, labelled so: the activation/workspace peak of each graph (TensorRT reuses
activation memory inside an engine, and engines run one at a time: the largest
counts) and a fixed reserve for the CUDA context, TensorRT and the plugin library.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..config import ModelConfig, StreamConfig
from ..errors import DysinkError
from ..graphs import vae_cache_shapes

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GB = 1e9
RESERVE_BYTES = {"desktop": int(1.5 * GB), "jetson": int(1.0 * GB)}   # context + TensorRT + plugins (estimate)


def parse_memory(text: str) -> int:
    """'64GB', '16 GiB', '8000MB', '12.5G' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib|m|mb|mib|t|tb|tib)?\s*", str(text).lower())
    if not m:
        raise DysinkError(f"--memory {text!r} is not a size; write e.g. 64GB, 16GiB or 8000MB")
    value, unit = float(m.group(1)), (m.group(2) or "gb")
    scale = {"g": GB, "gb": GB, "gib": 2 ** 30, "m": 1e6, "mb": 1e6, "mib": 2 ** 20, "t": 1e12, "tb": 1e12,
             "tib": 2 ** 40}[unit]
    if value <= 0:
        raise DysinkError(f"--memory must be > 0, got {text!r}")
    return int(value * scale)


def page_bytes(model: ModelConfig, stream: StreamConfig, precision: str) -> int:
    """One page: K and V of one block (block_frames latent frames) in every layer."""
    d = model.dit
    lat_h, lat_w = stream.latent_hw
    tokens = stream.block_frames * (lat_h // d.patch[1]) * (lat_w // d.patch[2])
    return 2 * d.layers * tokens * d.heads * d.head_dim * BYTES[precision]


def weight_counts(model: ModelConfig) -> dict[str, int]:
    """Parameters per network, counted on the meta device (exact, no memory used)."""
    try:
        import torch
    except ImportError:
        raise DysinkError("the planner counts weights with PyTorch (meta device): install dysink-deploy[torch]") from None
    from ..models.dit import CausalWanDiT              # lazy: torch
    from ..models.pe_core import PECoreVisionEncoder   # lazy: torch
    from ..models.vae import WanVAEDecoder             # lazy: torch

    with torch.device("meta"):
        nets = {"dit": CausalWanDiT(model.dit), "vae_decoder": WanVAEDecoder(model.vae),
                "memory_encoder": PECoreVisionEncoder(model.pe)}
    return {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}


@dataclass
class Plan:
    model: str
    precision: str
    height: int
    width: int
    memory: int
    items: dict[str, int] = field(default_factory=dict)        # exact bytes
    estimates: dict[str, int] = field(default_factory=dict)    # estimated bytes
    page: int = 0
    fixed_pages: int = 0
    bank_capacity: int = 0
    max_bank_capacity: int = 0

    @property
    def total(self) -> int:
        return sum(self.items.values()) + sum(self.estimates.values())


def plan(model: ModelConfig, stream: StreamConfig, precision: str, memory: int, platform: str = "desktop") -> Plan:
    """Bytes for this stream with stream.bank_capacity entries, and the largest capacity that fits `memory`."""
    if precision not in BYTES:
        raise DysinkError(f"--precision must be one of {', '.join(BYTES)}, got {precision!r}")
    b = BYTES[precision]
    d = model.dit
    lat_h, lat_w = stream.latent_hw
    tokens = stream.block_frames * (lat_h // d.patch[1]) * (lat_w // d.patch[2])
    page = page_bytes(model, stream, precision)
    fixed_pages = stream.pool_pages - stream.bank_capacity          # window history + current block + fixed sink
    weights = weight_counts(model)
    feat = model.pe.output_dim or model.pe.width
    vae_cache = sum(math.prod(s) for s in vae_cache_shapes(model, stream)) * b
    p = Plan(model.name, precision, stream.height, stream.width, memory, page=page, fixed_pages=fixed_pages,
             bank_capacity=stream.bank_capacity)
    p.items = {
        "weights: DiT": weights["dit"] * b,
        "weights: VAE decoder": weights["vae_decoder"] * b,
        "weights: PE-Core memory encoder": weights["memory_encoder"] * b,
        f"K/V pool: {stream.pool_pages} pages x {page / GB:.3f} GB": stream.pool_pages * page,
        "text K/V (cross-attention, one prompt)": 2 * d.layers * d.text_len * d.heads * d.head_dim * b,
        "VAE streaming cache (in + out)": 2 * vae_cache,
        "bank features; step outputs k_new / v_new": stream.bank_capacity * feat * 4 + page,
    }
    # Activation peaks (estimates): engines run one at a time, so the largest counts.
    frames = 4 * stream.block_frames
    vae_peak = 3 * frames * model.vae.dim * model.vae.dim_mult[0] * stream.height * stream.width * b
    dit_peak = tokens * (4 * d.dim * 4 + 3 * d.dim * b + 2 * d.ffn_dim * b)
    gate_ws = 4 * (stream.sink_slots + stream.local_slots + 2) * d.heads * 8 * d.head_dim
    p.estimates = {
        "activations: peak engine (estimate; VAE decode at full resolution)": max(vae_peak, dit_peak + gate_ws),
        f"CUDA context, TensorRT, plugins (estimate, {platform})": RESERVE_BYTES[platform],
    }
    free = memory - (p.total - stream.pool_pages * page)
    p.max_bank_capacity = max(0, int(free // page) - fixed_pages)
    return p


def check_fits(p: Plan, stream: StreamConfig) -> None:
    if p.max_bank_capacity < stream.top_k:
        need = p.total - p.bank_capacity * p.page + stream.top_k * p.page
        raise DysinkError(
            f"{p.model} {p.precision} at {p.width}x{p.height} does not fit in {p.memory / GB:.1f} GB: even a bank of "
            f"top_k = {stream.top_k} needs {need / GB:.1f} GB ({p.page / GB:.3f} GB per page); lower the resolution, "
            "use fp16/bf16, or a device with more memory")
    if p.total > p.memory:
        raise DysinkError(
            f"bank capacity {p.bank_capacity} needs {p.total / GB:.1f} GB, more than {p.memory / GB:.1f} GB; "
            f"the largest that fits is {p.max_bank_capacity} (--bank-capacity {p.max_bank_capacity})")


def format_plan(p: Plan) -> list[str]:
    lines = [f"{p.model} | {p.precision} | {p.width}x{p.height} | device memory {p.memory / GB:.1f} GB"]
    width = max(len(k) for k in list(p.items) + list(p.estimates))
    for k, v in p.items.items():
        lines.append(f"  {k:<{width}}  {v / GB:9.3f} GB")
    for k, v in p.estimates.items():
        lines.append(f"  {k:<{width}}  {v / GB:9.3f} GB")
    lines.append(f"  {'total':<{width}}  {p.total / GB:9.3f} GB  (bank capacity {p.bank_capacity})")
    lines.append(f"largest bank capacity that fits: {p.max_bank_capacity} "
                 f"({p.fixed_pages} more pages hold the window and the block being made)")
    lines.append("driver: plugin cubins for sm_100 and newer from Triton's bundled ptxas (CUDA 13.1) need an R580+ "
                 "driver (or compile them with the machine's own ptxas: TRITON_PTXAS_BLACKWELL_PATH)")
    return lines
