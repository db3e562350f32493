"""The static-shape graph contract shared by export, bundles and every backend.

Torch-free: the runtime reads it to bind buffers, the exporter to name the
ONNX inputs/outputs, the manifest to record them. One stream configuration
fixes every shape (DESIGN.md "Static shapes"). Batch is 1 (one stream).

Graphs:
  text_encoder      prompt_embeds -> per-layer cross-attention K/V (once per prompt)
  dit_step          one DiT evaluation of one block over the paged K/V cache
  retrieve          RetrieveSinks over the memory bank
  vae_decode_first  first block through the VAE decoder (first-frame rule, zero history:
                    z in, frames + cache out)
  vae_decode        any later block, streaming cache in -> out
  memory_encoder_tN N decoded frames -> unit bank feature (N = 9 for the
                    block-alone decode; 4*B for streamed frames)
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, StreamConfig

PRECISIONS = ("fp32", "fp16", "bf16")
# K/V page storage (vLLM's --kv-cache-dtype names): auto = the model precision; the 8-bit ones carry scales.
KV_CACHE_DTYPES = ("auto", "bf16", "fp8", "int8")
QUANTISED_KV_DTYPES = ("fp8", "int8")
# dtype names are ONNX / numpy style strings; "model" resolves to the precision.
_MODEL_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_PAGE_DTYPE = {"bf16": "bfloat16", "int8": "int8", "fp8": "float8e4m3fn"}


def check_kv_cache_dtype(kv_cache_dtype) -> str:
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
    return kv_cache_dtype


BANK_PLACEMENTS = ("device", "host")

# The VAE decode graphs' inner layout (models/vae.py: the same function, inputs and outputs; only the
# float summation order differs): channels = Wan's [B, C, T, H, W] with Conv3d, frames = [B, T, C, H, W]
# with every 3D convolution as one Conv2d per temporal tap (ONNX Runtime's CPU provider has fast kernels
# for 2D convolutions only). auto = frames for fp32 (the ONNX Runtime CPU precision), channels for
# fp16 / bf16 (TensorRT's Conv3d; the frames form was never measured on a GPU).
VAE_LAYOUTS = ("auto", "channels", "frames")


def resolve_vae_layout(vae_layout, precision: str) -> str:
    """channels or frames for `vae_layout` (auto resolved by precision); ValueError on anything else."""
    if vae_layout not in VAE_LAYOUTS:
        raise ValueError(f"vae_layout must be one of {', '.join(VAE_LAYOUTS)}, got {vae_layout!r}")
    if vae_layout == "auto":
        return "frames" if precision == "fp32" else "channels"
    return vae_layout


def device_pool_pages(stream: StreamConfig, bank_placement: str = "device") -> int:
    """Pages of the K/V pool on the device: every page (device), or the window history, the block
    being made, the fixed sink and top_k staging slots for the retrieved entries (host: the bank's
    pages live in host memory, runtime/host_bank.py)."""
    if bank_placement not in BANK_PLACEMENTS:
        raise ValueError(f"bank_placement must be one of {', '.join(BANK_PLACEMENTS)}, got {bank_placement!r}")
    if bank_placement == "host":
        return stream.window_history + 1 + stream.fixed_sink_pages + stream.top_k
    return stream.pool_pages


def page_dtype_name(precision: str, kv_cache_dtype: str) -> str:
    """The dtype name of the K/V pools: the model's under `auto`, else the page type's."""
    return _MODEL_DTYPE[precision] if check_kv_cache_dtype(kv_cache_dtype) == "auto" else _PAGE_DTYPE[kv_cache_dtype]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # float32 | float16 | bfloat16 | int64 | int32 | bool | int8 | float8e4m3fn (8-bit K/V pages)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def nbytes(self) -> int:
        size = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "int8": 1,
                "float8e4m3fn": 1}[self.dtype]
        n = 1
        for d in self.shape:
            n *= d
        return n * size

    @staticmethod
    def from_dict(d: dict) -> "TensorSpec":
        return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def vae_cache_shapes(model: ModelConfig, stream: StreamConfig) -> list[tuple[int, ...]]:
    """Shapes of the VAE decoder's streaming cache (one per causal temporal conv), batch 1.

    Mirrors WanVAEDecoder.cache_shapes without importing torch: entries are
    [1, C_in, 2, h * s, w * s] in module order.
    """
    vae = model.vae
    lat_h, lat_w = stream.latent_hw
    shapes: list[tuple[int, ...]] = []

    def conv(cin: int, scale: int) -> None:
        shapes.append((1, cin, 2, lat_h * scale, lat_w * scale))

    dims = [vae.dim * m for m in (vae.dim_mult[-1],) + tuple(reversed(vae.dim_mult))]
    conv(vae.z_dim, 1)                                   # decoder.conv1
    for _ in range(2):                                   # middle: res, attn, res
        conv(dims[0], 1)
        conv(dims[0], 1)
    scale = 1
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):
            din //= 2
        for _ in range(vae.num_res_blocks + 1):
            conv(din, scale)
            conv(dout, scale)
            din = dout
        if i != len(vae.dim_mult) - 1:
            if vae.temporal_upsample[i]:
                conv(dout, scale)                        # time_conv sees the pre-upsample frames
            scale *= 2
    conv(dims[-1], scale)                                # head conv
    return shapes


def tokens_per_block(model: ModelConfig, stream: StreamConfig) -> int:
    lat_h, lat_w = stream.latent_hw
    return stream.block_frames * (lat_h // model.dit.patch[1]) * (lat_w // model.dit.patch[2])


def frames_out(stream: StreamConfig, first: bool) -> int:
    b = stream.block_frames
    return 1 + 4 * (b - 1) if first else 4 * b


MAX_ENCODER_FRAMES = 1024


def check_encoder_frames(counts) -> tuple[int, ...]:
    """Extra memory-encoder frame counts (`--encoder-frames`): integers in 1..MAX_ENCODER_FRAMES."""
    out = []
    for n in counts:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ENCODER_FRAMES:
            raise ValueError(f"encoder frame counts must be integers in 1..{MAX_ENCODER_FRAMES}, got {n!r}")
        out.append(n)
    return tuple(sorted(set(out)))


def graph_specs(model: ModelConfig, stream: StreamConfig, precision: str,
                encoder_frames=(), interactive: bool = False, text_encoder: bool = False,
                kv_cache_dtype: str = "auto", bank_placement: str = "device") -> dict[str, GraphSpec]:
    """The graph contract of (model, stream, precision). `encoder_frames`: extra frame counts for
    which a memory_encoder_tN graph is exported beside the ones the stream uses (PE-Core on clips
    of other lengths, for callers). `interactive`: also `dit_recache`, the window recache of a
    prompt switch (models.dit.WindowRecache) over the widest window. `text_encoder`: also
    `umt5_encoder`, token ids -> prompt embeddings (float32 like the reference), so that bundle
    backends encode prompts without torch. `kv_cache_dtype`: the K/V pools' storage (ops/kv_pages.py);
    fp8 / int8 pools come with float32 scale pools `k_scale_i` / `v_scale_i` [P, L, H] after them.
    `bank_placement`: host cuts the pools to the device slots (`device_pool_pages`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    md = _MODEL_DTYPE[precision]
    d = model.dit
    layers, heads, hd = d.layers, d.heads, d.head_dim
    L = tokens_per_block(model, stream)
    lat_h, lat_w = stream.latent_hw
    latent = (d.in_dim, stream.block_frames, lat_h, lat_w)
    kv = (layers, L, heads, hd)
    pool = (device_pool_pages(stream, bank_placement), L, heads, hd)
    pd = page_dtype_name(precision, kv_cache_dtype)
    scales = () if kv_cache_dtype not in QUANTISED_KV_DTYPES else (
        *[TensorSpec(f"k_scale_{i}", pool[:3], "float32") for i in range(layers)],
        *[TensorSpec(f"v_scale_{i}", pool[:3], "float32") for i in range(layers)])
    text = (layers, d.text_len, heads, hd)
    feat = model.pe.output_dim or model.pe.width
    specs: dict[str, GraphSpec] = {}

    specs["text_encoder"] = GraphSpec(
        "text_encoder",
        (TensorSpec("prompt_embeds", (d.text_len, d.text_dim), "float32"),),
        (TensorSpec("text_k", text, md), TensorSpec("text_v", text, md)))

    specs["dit_step"] = GraphSpec(
        "dit_step",
        (TensorSpec("x_t", latent, "float32"), TensorSpec("t", (), "float32"),
         TensorSpec("t_freq", (d.freq_dim,), "float32"),
         TensorSpec("text_k", text, md), TensorSpec("text_v", text, md),
         TensorSpec("rope", (2, L, hd // 2), "float32"),
         *[TensorSpec(f"k_pool_{i}", pool, pd) for i in range(layers)],
         *[TensorSpec(f"v_pool_{i}", pool, pd) for i in range(layers)],
         *scales,
         TensorSpec("local_ids", (stream.local_slots,), "int64"),
         TensorSpec("sink_ids", (stream.sink_slots,), "int64")),
        (TensorSpec("x0", latent, "float32"), TensorSpec("k_new", kv, md), TensorSpec("v_new", kv, md),
         TensorSpec("ratios", (layers, stream.sink_slots), "float32")))

    if text_encoder:
        specs["umt5_encoder"] = GraphSpec(
            "umt5_encoder",
            (TensorSpec("ids", (1, d.text_len), "int64"), TensorSpec("mask", (1, d.text_len), "int64")),
            (TensorSpec("prompt_embeds", (d.text_len, d.text_dim), "float32"),))

    if interactive:
        n_max = stream.window_frames(0)
        tokens = L // stream.block_frames * n_max
        specs["dit_recache"] = GraphSpec(
            "dit_recache",
            (TensorSpec("x", (d.in_dim, n_max, lat_h, lat_w), "float32"), TensorSpec("t", (), "float32"),
             TensorSpec("t_freq", (d.freq_dim,), "float32"),
             TensorSpec("text_k", text, md), TensorSpec("text_v", text, md),
             TensorSpec("rope", (2, tokens, hd // 2), "float32"), TensorSpec("key_valid", (tokens,), "bool")),
            (TensorSpec("k", (layers, tokens, heads, hd), md), TensorSpec("v", (layers, tokens, heads, hd), md)))

    c, q = stream.bank_capacity, stream.queue_len
    # query_valid is int32 (1 valid, 0 not): it feeds the RetrieveSinks plugin directly, and TensorRT
    # plugins take no BOOL (or UINT8) inputs or outputs (NvInferRuntimePlugin.h).
    specs["retrieve"] = GraphSpec(
        "retrieve",
        (TensorSpec("bank_feats", (c, feat), "float32"), TensorSpec("bank_start", (c,), "int64"),
         TensorSpec("queries", (q, feat), "float32"), TensorSpec("query_valid", (q,), "int32"),
         TensorSpec("current_start", (), "int64"), TensorSpec("window_frames", (), "int64")),
        (TensorSpec("slots", (stream.top_k,), "int64"), TensorSpec("scores", (stream.top_k,), "float32")))

    caches = vae_cache_shapes(model, stream)
    for name, first in (("vae_decode_first", True), ("vae_decode", False)):
        t_out = frames_out(stream, first)
        # The first block starts from zero history: no cache inputs (zero padding inside).
        cache_in = () if first else tuple(TensorSpec(f"cache_{i}", s, md) for i, s in enumerate(caches))
        specs[name] = GraphSpec(
            name,
            (TensorSpec("z", (1,) + latent, md), *cache_in),
            (TensorSpec("frames", (1, 3, t_out, stream.height, stream.width), md),
             *[TensorSpec(f"cache_out_{i}", s, md) for i, s in enumerate(caches)]))

    counts = {frames_out(stream, True), *check_encoder_frames(encoder_frames)}
    if stream.feature_mode == "streamed":
        counts.add(frames_out(stream, False))
    for n in sorted(counts):
        name = f"memory_encoder_t{n}"
        specs[name] = GraphSpec(
            name,
            (TensorSpec("frames", (1, 3, n, stream.height, stream.width), md),),
            (TensorSpec("feature", (1, feat), "float32"),))
    return specs
