"""Memory planner: what one stream needs on the device, and the configurations that fit.

    dysink-export plan --model wan2.1-t2v-1.3b --memory 16GB --platform desktop

Every byte comes from formulas over the ModelConfig's and StreamConfig's shapes; nothing is built
(no torch, no meta device: 100,000 layers are counted as fast as 30). Exact figures: the weights of
the three networks (parameter counts of models/dit.py, vae.py, pe_core.py written out; a test checks
them against the modules), K/V bytes per page (one block's clean-pass K and V in every layer) in
the page dtype, plus the scales of 8-bit pages, the pool pages on the device, the host-side bank
(`bank_placement host`), the cross-attention text K/V, the VAE decoder's streaming cache, the bank
features. Estimates, labelled so: the activation peak of the largest graph (engines run one at a
time; where the attention materialises its float32 scores, the reference op and ONNX Runtime's
function body, those count too: they grow with the window and the block) and a fixed reserve for
the CUDA context, TensorRT and the plugin library.

8-bit pages (`kv_cache_dtype` fp8 / int8) hold one byte per element plus one float32 scale per
(layer, K or V, token, head): 2 * layers * tokens * heads * 4 bytes a page (SCALE_BYTES).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from ..config import ModelConfig, StreamConfig
from ..errors import DysinkError
from ..graphs import QUANTISED_KV_DTYPES, device_pool_pages, vae_cache_shapes

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
KV_BYTES = {"bf16": 2, "fp8": 1, "int8": 1}
SCALE_BYTES = 4                  # one float32 scale per (layer, K|V, token, head) of an 8-bit page
GB = 1e9
RESERVE_BYTES = {"desktop": int(1.5 * GB), "jetson": int(1.0 * GB)}   # context + TensorRT + plugins (estimate)
PLATFORMS = tuple(RESERVE_BYTES)
# fp8 (e4m3) pages need sm_89+ (Ada, Hopper, Blackwell) in Triton and TensorRT; Orin is sm_87.
FP8_NOTE = "fp8 pages need sm_89 or newer (Ada/Hopper/Blackwell); Jetson Orin is sm_87: int8 there"
Q8_BACKENDS_NOTE = ("8-bit pages run on the torch backend (reference op or Triton kernels) and on onnxruntime's "
                    "CPU provider in this version; the TensorRT plugin and the tensorrt backend's page writes for "
                    "them are written but have not run on TensorRT yet")
# Resolutions the search tries below the requested one (height, width), all multiples of 16.
RESOLUTIONS = ((480, 832), (384, 672), (320, 576), (240, 416))
# JetPack 6.2 ships TensorRT 10.3, whose ONNX parser reads opset <= 20; bf16 bundles are opset 22.
JETSON_PRECISION_NOTE = ("warning: Jetson Orin on JetPack 6.2 has TensorRT 10.3, whose ONNX parser reads opset "
                         "<= 20; bf16 bundles are opset 22 (bf16 Conv): export --precision fp16 for the device")


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


# ---------------------------------------------------------------------------------------------
# Parameter counts, written out from the modules (tests/runtime/test_plan.py checks them)
# ---------------------------------------------------------------------------------------------
def _linear(i: int, o: int) -> int:
    return i * o + o


def dit_params(model: ModelConfig) -> int:
    """models/dit.py CausalWanDiT (the LoRA is merged into the base weights: no extra tensors)."""
    d = model.dit
    dim, patch = d.dim, math.prod(d.patch)
    attn = 4 * _linear(dim, dim) + 2 * dim                         # q, k, v, o + norm_q, norm_k
    block = 2 * attn + 2 * dim + _linear(dim, d.ffn_dim) + _linear(d.ffn_dim, dim) + 6 * dim
    return (d.in_dim * dim * patch + dim                           # patch_embedding
            + _linear(d.text_dim, dim) + _linear(dim, dim)         # text_embedding
            + _linear(d.freq_dim, dim) + _linear(dim, dim)         # time_embedding
            + _linear(dim, 6 * dim)                                # time_projection
            + d.layers * block
            + _linear(dim, d.out_dim * patch) + 2 * dim)           # head + its modulation


def vae_decoder_params(model: ModelConfig) -> int:
    """models/vae.py WanVAEDecoder (conv2 + decoder)."""
    v = model.vae

    def conv3(i, o, k=27):
        return i * o * k + o

    def res(i, o):
        return i + conv3(i, o) + o + conv3(o, o) + (_linear(i, o) if i != o else 0)

    dims = [v.dim * m for m in (v.dim_mult[-1], *reversed(v.dim_mult))]
    n = _linear(v.z_dim, v.z_dim) + conv3(v.z_dim, dims[0])
    n += 2 * res(dims[0], dims[0]) + dims[0] + _linear(dims[0], 3 * dims[0]) + _linear(dims[0], dims[0])
    stages = len(v.dim_mult)
    out = dims[0]
    for i in range(stages):
        cin, out = (dims[i] if i == 0 else dims[i] // 2), dims[i + 1]
        for _ in range(v.num_res_blocks + 1):
            n += res(cin, out)
            cin = out
        if i < stages - 1:
            n += out * (out // 2) * 9 + out // 2                   # resample conv 3x3
            if v.temporal_upsample[i]:
                n += conv3(out, 2 * out, 3)                        # time_conv (3, 1, 1)
    return n + out + conv3(out, 3)                                 # head: norm + conv


def pe_params(model: ModelConfig) -> int:
    """models/pe_core.py PECoreVisionEncoder."""
    p = model.pe
    w, hidden = p.width, int(p.width * p.mlp_ratio)
    n = 3 * w * p.patch_size ** 2
    n += w if p.use_cls_token else 0
    n += (int(p.use_cls_token) + p.grid_size ** 2) * w if p.use_abs_posemb else 0
    n += 2 * w if p.use_ln_pre else 0
    layer = 4 * w + _linear(w, 3 * w) + _linear(w, w) + _linear(w, hidden) + _linear(hidden, w)
    layer += 2 * w if p.ls_init_value is not None else 0
    n += p.layers * layer
    n += 2 * w if p.use_ln_post else 0
    if p.pool_type == "attn":
        n += w + _linear(w, 3 * w) + _linear(w, w) + 2 * w + _linear(w, 4 * w) + _linear(4 * w, w)
    return n + (w * p.output_dim if p.output_dim is not None else 0)


def weight_counts(model: ModelConfig) -> dict[str, int]:
    """Parameters per network, from the formulas above (no torch, no memory)."""
    return {"dit": dit_params(model), "vae_decoder": vae_decoder_params(model), "memory_encoder": pe_params(model)}


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------
def tokens_per_block(model: ModelConfig, stream: StreamConfig) -> int:
    d = model.dit
    lat_h, lat_w = stream.latent_hw
    return stream.block_frames * (lat_h // d.patch[1]) * (lat_w // d.patch[2])


def page_dtype(precision: str, kv_cache_dtype: str = "auto") -> str:
    """The element type of a page: the model precision for auto, else the named one."""
    return precision if kv_cache_dtype == "auto" else kv_cache_dtype


def page_bytes(model: ModelConfig, stream: StreamConfig, precision: str, kv_cache_dtype: str = "auto") -> int:
    """One page: K and V of one block in every layer, plus the scales of an 8-bit page."""
    d = model.dit
    elems = 2 * d.layers * tokens_per_block(model, stream) * d.heads * d.head_dim
    kind = page_dtype(precision, kv_cache_dtype)
    if kind not in BYTES and kind not in KV_BYTES:
        raise DysinkError(f"--kv-cache-dtype must be one of auto, {', '.join(KV_BYTES)}, got {kv_cache_dtype!r}")
    return elems * BYTES.get(kind, KV_BYTES.get(kind, 0)) + scale_bytes(model, stream, kv_cache_dtype)


def scale_bytes(model: ModelConfig, stream: StreamConfig, kv_cache_dtype: str) -> int:
    """The scales of one 8-bit page (0 for 16/32-bit pages)."""
    if kv_cache_dtype not in QUANTISED_KV_DTYPES:
        return 0
    d = model.dit
    return 2 * d.layers * tokens_per_block(model, stream) * d.heads * SCALE_BYTES


def attention_scores_bytes(model: ModelConfig, stream: StreamConfig) -> int:
    """The float32 working set of a GatedSinkAttention that materialises its scores (the reference op,
    on the CPU or with --kernels reference; the ONNX function body in ONNX Runtime), which grows with
    the window and the block: scores and their softmax [heads, tokens, keys] and the pages' K and V
    gathered, then concatenated [keys, heads, head_dim], keys = the tokens of every sink, local and
    current-block slot (the fused kernels and the TensorRT plugin hold none of it)."""
    d = model.dit
    tokens = tokens_per_block(model, stream)
    keys = (stream.sink_slots + stream.local_slots + 1) * tokens
    return 4 * (2 * d.heads * tokens * keys + 2 * 2 * keys * d.heads * d.head_dim)


# ---------------------------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------------------------
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
    kv_cache_dtype: str = "auto"
    bank_placement: str = "device"
    platform: str = "desktop"
    host_bank: int = 0                                         # pinned host bytes of a host-side bank

    @property
    def total(self) -> int:
        """Bytes of the device memory (on Jetson, CPU and GPU share it: the host bank counts too)."""
        shared = self.host_bank if self.platform == "jetson" else 0
        return sum(self.items.values()) + sum(self.estimates.values()) + shared

    @property
    def fits(self) -> bool:
        return self.total <= self.memory


def _check_choices(precision: str, kv_cache_dtype: str, bank_placement: str, platform: str) -> None:
    if precision not in BYTES:
        raise DysinkError(f"--precision must be one of {', '.join(BYTES)}, got {precision!r}")
    if kv_cache_dtype not in ("auto", *KV_BYTES):
        raise DysinkError(f"--kv-cache-dtype must be one of auto, {', '.join(KV_BYTES)}, got {kv_cache_dtype!r}")
    if bank_placement not in ("device", "host"):
        raise DysinkError(f"--bank-placement must be device or host, got {bank_placement!r}")
    if platform not in PLATFORMS:
        raise DysinkError(f"--platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")


def plan(model: ModelConfig, stream: StreamConfig, precision: str, memory: int, platform: str = "desktop",
         kv_cache_dtype: str = "auto", bank_placement: str = "device", scores: bool = False) -> Plan:
    """Bytes for this stream with stream.bank_capacity entries, and the largest capacity that fits `memory`.
    scores: the attention materialises its scores (see `attention_scores_bytes`): counted in the DiT's peak."""
    _check_choices(precision, kv_cache_dtype, bank_placement, platform)
    b = BYTES[precision]
    d = model.dit
    tokens = tokens_per_block(model, stream)
    page = page_bytes(model, stream, precision, kv_cache_dtype)
    on_device = device_pool_pages(stream, bank_placement)
    fixed_pages = stream.pool_pages - stream.bank_capacity          # window history + current block + fixed sink
    weights = weight_counts(model)
    feat = model.pe.output_dim or model.pe.width
    vae_cache = sum(math.prod(s) for s in vae_cache_shapes(model, stream)) * b
    p = Plan(model.name, precision, stream.height, stream.width, memory, page=page, fixed_pages=fixed_pages,
             bank_capacity=stream.bank_capacity, kv_cache_dtype=kv_cache_dtype, bank_placement=bank_placement,
             platform=platform)
    kind = page_dtype(precision, kv_cache_dtype)
    what = "staging pages" if bank_placement == "host" else "pages"
    p.items = {
        "weights: DiT": weights["dit"] * b,
        "weights: VAE decoder": weights["vae_decoder"] * b,
        "weights: PE-Core memory encoder": weights["memory_encoder"] * b,
        f"K/V pool: {on_device} {what} x {page / GB:.3f} GB ({kind})": on_device * page,
        "text K/V (cross-attention, one prompt)": 2 * d.layers * d.text_len * d.heads * d.head_dim * b,
        "VAE streaming cache (in + out)": 2 * vae_cache,
        "bank features; step outputs k_new / v_new": stream.bank_capacity * feat * 4 + page_bytes(
            model, stream, precision),
    }
    if bank_placement == "host":
        p.host_bank = stream.bank_capacity * page
    # Activation peaks (estimates): engines run one at a time, so the largest counts.
    frames = 4 * stream.block_frames
    vae_peak = 3 * frames * model.vae.dim * model.vae.dim_mult[0] * stream.height * stream.width * b
    dit_peak = tokens * (4 * d.dim * 4 + 3 * d.dim * b + 2 * d.ffn_dim * b)
    gate_ws = 4 * (stream.sink_slots + stream.local_slots + 2) * d.heads * 8 * d.head_dim
    dit_peak += gate_ws + (attention_scores_bytes(model, stream) if scores else 0)
    peak = ("activations: peak engine (estimate; the DiT step with float32 attention scores over the widest window)"
            if scores and dit_peak > vae_peak else "activations: peak engine (estimate; VAE decode at full resolution)")
    p.estimates = {
        peak: max(vae_peak, dit_peak),
        f"CUDA context, TensorRT, plugins (estimate, {platform})": RESERVE_BYTES[platform],
    }
    # The largest bank: on the device each entry is a page; a host bank costs the device nothing more
    # (on Jetson it costs the same shared memory).
    free = memory - (p.total - on_device * page - (p.host_bank if platform == "jetson" else 0))
    if bank_placement == "host" and platform != "jetson":
        p.max_bank_capacity = (1 << 20) if free >= on_device * page else 0   # bounded by host memory, not this one
    else:
        p.max_bank_capacity = max(0, int(free // page) - fixed_pages)
    return p


def check_fits(p: Plan, stream: StreamConfig) -> None:
    if p.max_bank_capacity < stream.top_k:
        need = p.total - p.bank_capacity * p.page + stream.top_k * p.page
        raise DysinkError(
            f"{p.model} {p.precision} at {p.width}x{p.height} does not fit in {p.memory / GB:.1f} GB: even a bank of "
            f"top_k = {stream.top_k} needs {need / GB:.1f} GB ({p.page / GB:.3f} GB per page); lower the resolution, "
            "use 8-bit pages or a host-side bank (dysink-export plan without those flags lists what fits)")
    if p.total > p.memory:
        raise DysinkError(
            f"bank capacity {p.bank_capacity} needs {p.total / GB:.1f} GB, more than {p.memory / GB:.1f} GB; "
            f"the largest that fits is {p.max_bank_capacity} (--bank-capacity {p.max_bank_capacity}), or see "
            f"dysink-export plan --model {p.model} --precision {p.precision} --memory {p.memory / GB:.0f}GB for "
            "other options")


def format_plan(p: Plan) -> list[str]:
    lines = [f"{p.model} | {p.precision} | {p.width}x{p.height} | K/V pages {page_dtype(p.precision, p.kv_cache_dtype)}"
             f" | bank on {p.bank_placement} | device memory {p.memory / GB:.1f} GB ({p.platform})"]
    width = max(len(k) for k in list(p.items) + list(p.estimates))
    for k, v in p.items.items():
        lines.append(f"  {k:<{width}}  {v / GB:9.3f} GB")
    for k, v in p.estimates.items():
        lines.append(f"  {k:<{width}}  {v / GB:9.3f} GB")
    if p.host_bank:
        where = "same memory as the GPU: counted" if p.platform == "jetson" else "host memory, not counted"
        lines.append(f"  {'bank: ' + str(p.bank_capacity) + ' pages in pinned host memory (' + where + ')':<{width}}"
                     f"  {p.host_bank / GB:9.3f} GB")
    lines.append(f"  {'total':<{width}}  {p.total / GB:9.3f} GB  (bank capacity {p.bank_capacity})")
    if p.bank_placement == "host" and p.platform != "jetson":
        lines.append("largest bank capacity that fits: bounded by host memory only "
                     f"({p.page / GB:.3f} GB of pinned host memory per entry)")
    else:
        lines.append(f"largest bank capacity that fits: {p.max_bank_capacity} "
                     f"({p.fixed_pages} more pages hold the window and the block being made)")
    lines.append("driver: plugin cubins for sm_100 and newer from Triton's bundled ptxas (CUDA 13.1) need an R580+ "
                 "driver (or compile them with the machine's own ptxas: TRITON_PTXAS_BLACKWELL_PATH)")
    return lines


# ---------------------------------------------------------------------------------------------
# The search: page dtype x bank placement x resolution x bank capacity
# ---------------------------------------------------------------------------------------------
BEST = ("best = the requested resolution first, then the requested bank capacity, then pages closest to the "
        "model precision (auto/bf16, then fp8, then int8), then the bank on the device (no copies), then the "
        "most memory left")
_DTYPE_RANK = {"auto": 0, "bf16": 0, "fp8": 1, "int8": 2}


def searched_dtypes(precision: str, platform: str) -> list[str]:
    """Page dtypes worth trying: auto, bf16 (only where it is narrower than the model), fp8 (not on
    Jetson: sm_87), int8."""
    out = ["auto"] + (["bf16"] if BYTES[precision] > 2 else [])
    return out + (["fp8"] if platform != "jetson" else []) + ["int8"]


def search(model: ModelConfig, stream: StreamConfig, precision: str, memory: int, platform: str = "desktop",
           kv_cache_dtypes=None, placements=None, resolutions=None, capacity_fixed: bool = False,
           scores: bool = False) -> list[Plan]:
    """Every configuration that fits `memory`, best first (see BEST). `stream` carries the requested
    resolution and bank capacity; None for a dimension: search it (resolutions: the requested one
    and the smaller RESOLUTIONS; capacities: the requested one, else the largest that fits)."""
    dtypes = list(kv_cache_dtypes or searched_dtypes(precision, platform))
    places = list(placements or (["device"] if platform == "jetson" else ["device", "host"]))
    sizes = list(resolutions or [(stream.height, stream.width)] + [
        r for r in RESOLUTIONS if r[0] * r[1] < stream.height * stream.width])
    wanted = stream.bank_capacity
    found = []
    for h, w in sizes:
        try:
            s = replace(stream, height=h, width=w)
        except DysinkError:
            continue
        for kv in dtypes:
            for place in places:
                p = plan(model, s, precision, memory, platform, kv, place, scores)
                if not p.fits and not capacity_fixed and s.top_k <= p.max_bank_capacity < wanted:
                    p = plan(model, replace(s, bank_capacity=p.max_bank_capacity), precision, memory, platform,
                             kv, place, scores)
                if p.fits:
                    found.append(p)
    pixels = stream.height * stream.width
    found.sort(key=lambda p: (p.height * p.width != pixels, -(p.height * p.width), p.bank_capacity < wanted,
                              -p.bank_capacity, _DTYPE_RANK[p.kv_cache_dtype], p.bank_placement != "device",
                              p.total))
    return found


def flags(p: Plan) -> str:
    """The flags of one configuration, for dysink-export onnx and dysink-run."""
    return (f"--precision {p.precision} --kv-cache-dtype {p.kv_cache_dtype} --bank-placement {p.bank_placement} "
            f"--bank-capacity {p.bank_capacity} --height {p.height} --width {p.width}")


def format_options(found: list[Plan], memory: int, limit: int = 12) -> list[str]:
    lines = [f"configurations that fit in {memory / GB:.1f} GB, best first ({BEST}):"]
    for i, p in enumerate(found[:limit], 1):
        host = f" + {p.host_bank / GB:.2f} GB pinned host" if p.host_bank and p.platform != "jetson" else ""
        lines.append(f"  {i:2d}. {p.total / GB:6.2f} GB{host} | {flags(p)}")
    if len(found) > limit:
        lines.append(f"  ... and {len(found) - limit} more (smaller resolutions or banks)")
    return lines


def check_allocation(model: ModelConfig, stream: StreamConfig, precision: str, available: int, where: str,
                     kv_cache_dtype: str = "auto", bank_placement: str = "device",
                     platform: str = "desktop", scores: bool = False) -> Plan:
    """Refuse, before anything is allocated, a stream `where` cannot hold: one line with the planner's
    figure and the best configuration that fits (from formulas: nothing is built). scores: the
    backend's attention materialises its scores (`attention_scores_bytes`)."""
    p = plan(model, stream, precision, available, platform, kv_cache_dtype, bank_placement, scores)
    if p.fits:
        return p
    best = search(model, stream, precision, available, platform, scores=scores)
    hint = (f"what fits: {flags(best[0])}" if best else "nothing fits there: a smaller model or more memory")
    raise DysinkError(f"this stream needs about {p.total / GB:.1f} GB ({model.name}, {stream.width}x{stream.height}, "
                      f"{precision}, {page_dtype(precision, kv_cache_dtype)} pages, bank capacity "
                      f"{stream.bank_capacity} on {bank_placement}) but {where} has {available / GB:.1f} GB "
                      f"available; {hint} (dysink-export plan --model {model.name} --precision {precision} "
                      f"--memory {max(available / GB, 0.1):.1f}GB lists the options)")


def export_host_bytes(model: ModelConfig, precision: str) -> int:
    """The least host memory `dysink-export onnx` needs: the networks' weights in float32 while they are
    built. The cast to `precision` frees each float32 tensor as it goes, so the two copies are never
    held whole at once (measured at 480x832, fp16 and bf16: peak RSS 6.32 GB against 6.06 GB of float32
    weights; README "Benchmarks"); the example inputs and the ONNX serialisation come on top."""
    if precision not in BYTES:
        raise DysinkError(f"--precision must be one of {', '.join(BYTES)}, got {precision!r}")
    return sum(weight_counts(model).values()) * 4


def bundle_weight_bytes(model: ModelConfig, precision: str) -> int:
    """Weights a bundle of the default graphs holds on disk (estimate, from the parameter counts):
    the DiT's (dit_step and text_encoder), the VAE decoder twice (vae_decode_first and vae_decode
    each hold it) and PE-Core (memory_encoder_t9); --interactive, --encoder-frames and
    --text-encoder add graphs."""
    w = weight_counts(model)
    return (w["dit"] + 2 * w["vae_decoder"] + w["memory_encoder"]) * BYTES[precision]


def export_line(model: ModelConfig, precision: str) -> str:
    """What the export itself takes on the machine that runs dysink-export onnx (host memory, disk)."""
    params = sum(weight_counts(model).values())
    return (f"export (dysink-export onnx --precision {precision}, on the machine that runs it): at least "
            f"{export_host_bytes(model, precision) / GB:.1f} GB of free host memory (estimated by the planner: "
            f"{params / 1e9:.2f} billion weights in float32 while built"
            + (f", cast to {precision} tensor by tensor" if precision != "fp32" else "")
            + "; example inputs and the ONNX serialisation come on top), and about "
            f"{bundle_weight_bytes(model, precision) / GB:.1f} GB of disk for the bundle's weights (estimate)")


def check_export(model: ModelConfig, precision: str, available: int) -> int:
    """Refuse, before a network is built, an export whose weights alone exceed host memory: the
    networks are built in float32 and cast to `precision` (both copies counted; the example inputs
    and the ONNX serialisation come on top). Returns the bytes counted."""
    need = export_host_bytes(model, precision)
    params = sum(weight_counts(model).values())
    if need > available:
        raise DysinkError(f"exporting {model.name} needs at least {need / GB:.1f} GB of host memory for its "
                          f"{params / 1e9:.2f} billion weights (float32 while built); this machine "
                          f"has {available / GB:.1f} GB available: export on a machine with more memory")
    return need
