"""The `onnxruntime` backend: the bundle's ONNX graphs, run by ONNX Runtime.

numpy + onnxruntime only (no torch): this is the path a user without
PyTorch streams with. Semantics mirror `TorchBackend` call for call; the
graphs are the exported twins of the modules it calls (export/onnx_export.py).

Buffers:
  * K/V pools: one [P, L, H, D] array per layer per K/V (DESIGN.md "Static
    shapes"), allocated once in `start` and bound once to the dit_step
    IOBinding. `write_page` writes a page in place, so a step never copies
    the pools: on CPU they are numpy arrays that the bound OrtValues wrap
    (no copy), on CUDA device buffers written with a device-to-device memcpy.
  * text K/V: computed once per prompt, kept on the device, bound once.
  * VAE streaming cache: the cache_out_* OrtValues of one block are bound as
    the cache_* inputs of the next; the first-block graph starts from zero
    history and takes none (`decode_alone` uses it too).
  * k_new / v_new: one preallocated pair, overwritten by every dit_step (the
    loop only uses the clean pass's pair, right away, in write_page).
Other outputs are allocated by ONNX Runtime per call (outputs bound by
device only are re-bound before every run: a binding left as it was would
make ORT reuse, and overwrite, the previous run's output).

Handles given to the loop are `OrtTensor`s (an OrtValue on the session's
device plus the shape the loop expects). Nothing reads back to the host
inside a block's denoising steps on a GPU provider either: `renoise` and
dtype casts run as tiny ONNX graphs on the same provider there (numpy on CPU).
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...bundle import Bundle, rebuild_command
from ...graphs import QUANTISED_KV_DTYPES
from ...errors import DysinkError
from ...graph_files import check_graph_io, session_io
from ...rope import timestep_frequencies
from ..pages import np_dequantise_pages, np_page_dtype, np_quantise_page
from .base import Backend

# --ort-provider NAME -> ONNX Runtime execution provider(s), in priority order.
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_MODEL_NP = {"fp32": np.float32, "fp16": np.float16}
# numpy (ml_dtypes) types ORT's Python API takes only as bits: ONNX TensorProto element types
# BFLOAT16 = 16, FLOAT8E4M3FN = 17.
_BIT_TYPES = {"bfloat16": 16, "float8_e4m3fn": 17}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise DysinkError("--backend onnxruntime needs the onnxruntime package: "
                          "pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


def resolve_providers(providers: str | Sequence[str]) -> tuple[str, ...]:
    """'cpu' | 'cuda' | 'tensorrt' or explicit EP names -> EP names, checked against this ORT build."""
    ort = _ort()
    names = PROVIDERS.get(providers, (providers,)) if isinstance(providers, str) else tuple(providers)
    available = ort.get_available_providers()
    if names[0] not in available:
        raise DysinkError(f"onnxruntime {ort.__version__} has no {names[0]} (available: {', '.join(available)}); "
                          f"install a build with it (onnxruntime-gpu for CUDA / TensorRT) or use --ort-provider cpu")
    return tuple(n for n in names if n in available)


@dataclass
class OrtTensor:
    """A backend handle: `value` lives on the session's device; `shape` is what the loop sees
    (the graphs' batch dimension of 1 is dropped for frames / features)."""

    value: Any                    # onnxruntime.OrtValue
    shape: tuple[int, ...]
    host: np.ndarray | None = None  # CPU only: the numpy array `value` wraps (same memory)


class OnnxRuntimeBackend(Backend):
    """Backend over a validated `Bundle` (fp32 / fp16 on any provider; bf16 only off CPU).

    providers: 'cpu' | 'cuda' | 'tensorrt' or EP names. threads: intra-op threads (None: ORT's choice).
    profile_dir: write ONNX Runtime's per-node profile of every session there (for `dysink-bench`).
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers: str | Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, profile_dir: str | None = None, device_id: int = 0,
                 sessions: dict | None = None):
        """`sessions`: another backend's sessions over the same bundle, shared (the weights are loaded
        once; each backend keeps its own pools and caches): several streams in one process."""
        ort = _ort()
        self.bundle, self.stream, self.model = bundle, bundle.stream, bundle.model
        self.providers = resolve_providers(providers)
        self.on_cpu = self.providers[0] == "CPUExecutionProvider"
        if bundle.precision == "bf16" and self.on_cpu:
            raise DysinkError(
                f"bundle {bundle.path} holds bf16 graphs, which ONNX Runtime cannot run on CPU (it has no bf16 "
                f"compute kernels); export an fp16 or fp32 bundle: "
                f"{rebuild_command(bundle.model, bundle.stream, 'fp16', str(bundle.path) + '-fp16', bundle.path / 'bundle.json', bundle.manifest.get('checkpoints'))}")
        if bundle.precision not in _MODEL_NP:   # bf16 on a GPU provider: host-side bf16 I/O is not written yet
            raise DysinkError(f"bundle {bundle.path}: {bundle.precision} graphs are not supported by the "
                              f"onnxruntime backend of this version; export an fp16 bundle: "
                              f"{rebuild_command(bundle.model, bundle.stream, 'fp16', str(bundle.path) + '-fp16', bundle.path / 'bundle.json', bundle.manifest.get('checkpoints'))}")
        self.np_dtype = _MODEL_NP[bundle.precision]
        # K/V pages (bundle.kv_cache_dtype): model precision, bf16, or 8-bit with float32 scales.
        self.kv_cache_dtype = bundle.kv_cache_dtype
        self.page_np = np_page_dtype(self.kv_cache_dtype, self.np_dtype)
        self.quantised = self.kv_cache_dtype in QUANTISED_KV_DTYPES
        if self.kv_cache_dtype != "auto" and not self.on_cpu:
            raise DysinkError(f"bundle {bundle.path} stores {self.kv_cache_dtype} K/V pages, which this version writes "
                              "on ONNX Runtime's CPU provider only; use --ort-provider cpu, or a bundle exported "
                              "with --kv-cache-dtype auto")
        self.device = ("cpu", 0) if self.on_cpu else ("cuda", device_id)
        prefix = f"{profile_dir}/ort" if profile_dir else None
        opts = session_options(ort, threads, profile_prefix=prefix)
        # Feature mode block-alone decodes every block twice (streamed, and alone for the feature):
        # on the CPU the two run at once, each VAE session on half the cores (`decode_both`).
        cores = threads or os.cpu_count() or 1
        self.overlap_decodes = self.on_cpu and bundle.stream.feature_mode != "streamed" and cores >= 2
        vae_opts = session_options(ort, cores // 2, profile_prefix=prefix) if self.overlap_decodes else opts
        self._alone_pool: ThreadPoolExecutor | None = None
        self._stream_pool: ThreadPoolExecutor | None = None
        # The same cores pipeline the streamed decode with the next block (Streamer.blocks).
        self.pipelines_decodes = self.overlap_decodes
        self.sessions = sessions if sessions is not None else {
            name: load_session(ort, bundle, name, str(bundle.graph_path(name)),
                               vae_opts if name in _VAE_GRAPHS else opts, self.providers)
            for name in bundle.graphs}
        self.specs = bundle.specs
        self._ops = None if self.on_cpu else _DeviceOps(ort, self.providers, bundle.precision, self.device)
        self._dit_io = None

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.model.pe.output_dim or self.model.pe.width

    def _value(self, array: np.ndarray):
        ort = _ort()
        array = np.ascontiguousarray(array)
        return ort.OrtValue.ortvalue_from_numpy(array, *self.device)

    def _wrap(self, array: np.ndarray, shape: tuple[int, ...] | None = None) -> OrtTensor:
        array = np.ascontiguousarray(array)
        return OrtTensor(self._value(array), tuple(array.shape if shape is None else shape),
                         array if self.on_cpu else None)

    def _run(self, name: str, inputs: dict[str, Any], preallocated: dict[str, Any] | None = None) -> list:
        """Run graph `name` through an IOBinding; inputs are OrtValues; returns its OrtValue outputs."""
        sess = self.sessions[name]
        io = sess.io_binding()
        for key, value in inputs.items():
            io.bind_ortvalue_input(key, value)
        for spec in self.specs[name].outputs:
            if preallocated and spec.name in preallocated:
                io.bind_ortvalue_output(spec.name, preallocated[spec.name])
            else:
                io.bind_output(spec.name, self.device[0], self.device[1])
        sess.run_with_iobinding(io)
        return io.get_outputs()

    def _zeros(self, shape, dtype) -> tuple[Any, np.ndarray | None]:
        host = np.zeros(shape, dtype=dtype)
        if host.dtype.name in _BIT_TYPES:     # bf16 / e4m3 pages (CPU only): ORT wraps their bits, no copy
            bits = host.view(np.uint8 if host.itemsize == 1 else np.uint16)
            return _ort().OrtValue.ortvalue_from_numpy_with_onnx_type(
                bits, onnx_element_type=_BIT_TYPES[host.dtype.name]), host
        return self._value(host), (host if self.on_cpu else None)

    def _ones(self, shape) -> tuple[Any, np.ndarray]:
        host = np.ones(shape, dtype=np.float32)
        return self._value(host), host

    # -- Backend ---------------------------------------------------------------------------------
    def start(self, prompt_embeds: np.ndarray, num_pages: int) -> None:
        """Text K/V from prompt_embeds [text_len, text_dim]; zeroed pools [P, L, H, D] per layer; fresh VAE cache."""
        spec = self.specs["dit_step"]
        pool_shape = spec.input("k_pool_0").shape
        if num_pages != pool_shape[0]:
            raise DysinkError(f"the bundle's dit_step graph holds {pool_shape[0]} pool pages, the stream asked "
                              f"for {num_pages}; rebuild the bundle: {self.bundle.rebuild_command()}")
        text_k, text_v = self._run("text_encoder", {"prompt_embeds": self._value(prompt_embeds.astype(np.float32))})
        layers = self.model.dit.layers
        self.k_pools = [self._zeros(pool_shape, self.page_np) for _ in range(layers)]
        self.v_pools = [self._zeros(pool_shape, self.page_np) for _ in range(layers)]
        kv_shape = spec.output("k_new").shape
        self.k_new, self.v_new = self._zeros(kv_shape, self.np_dtype), self._zeros(kv_shape, self.np_dtype)
        self._fixed = {"text_k": text_k, "text_v": text_v,
                       **{f"k_pool_{i}": v for i, (v, _) in enumerate(self.k_pools)},
                       **{f"v_pool_{i}": v for i, (v, _) in enumerate(self.v_pools)}}
        self.k_scales = self.v_scales = None
        if self.quantised:           # one float32 scale per (token, head); an unwritten page reads as zeros
            self.k_scales = [self._ones(pool_shape[:3]) for _ in range(layers)]
            self.v_scales = [self._ones(pool_shape[:3]) for _ in range(layers)]
            self._fixed.update({f"k_scale_{i}": v for i, (v, _) in enumerate(self.k_scales)})
            self._fixed.update({f"v_scale_{i}": v for i, (v, _) in enumerate(self.v_scales)})
        self.vae_cache: dict = {}  # filled by the first block's cache_out_*

    def upload(self, array: np.ndarray) -> OrtTensor:
        return self._wrap(array)

    def encode_text(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token ids and mask [L] -> prompt embeddings float32 [L, text_dim] through the bundle's
        umt5_encoder graph (no torch)."""
        if "umt5_encoder" not in self.sessions:
            raise DysinkError(f"bundle {self.bundle.path} has no umt5_encoder graph; export it with "
                              f"--text-encoder FILE: {self.bundle.rebuild_command()} --text-encoder FILE")
        (out,) = self.sessions["umt5_encoder"].run(["prompt_embeds"], {"ids": ids[None].astype(np.int64),
                                                                       "mask": mask[None].astype(np.int64)})
        return np.asarray(out, dtype=np.float32)

    def set_prompt(self, prompt_embeds: np.ndarray) -> None:
        text_k, text_v = self._run("text_encoder", {"prompt_embeds": self._value(prompt_embeds.astype(np.float32))})
        self._fixed.update(text_k=text_k, text_v=text_v)

    def recache_window(self, x, t, rope, key_valid, blocks):
        if "dit_recache" not in self.sessions:
            self.bundle.require_interactive()           # a bundle made with --interactive has the graph
            raise DysinkError(f"bundle {self.bundle.path} has no dit_recache session; reload the bundle")
        inputs = {"x": self._value(x.astype(np.float32)), "t": self._value(np.asarray(t, dtype=np.float32)),
                  "t_freq": self._value(timestep_frequencies(float(t), self.bundle.model.dit.freq_dim)),
                  "text_k": self._fixed["text_k"], "text_v": self._fixed["text_v"],
                  "rope": self._value(rope.astype(np.float32)), "key_valid": self._value(key_valid.astype(np.bool_))}
        k, v = (np.array(o.numpy()) for o in self._run("dit_recache", inputs))
        per = k.shape[1] // (x.shape[1] // self.stream.block_frames)
        out = []
        for j in range(blocks):
            kj, vj = (np.ascontiguousarray(a[:, j * per:(j + 1) * per]) for a in (k, v))
            out.append((self._wrap(kj), self._wrap(vj)))
        return out

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        """x [C, F, h, w] float32 handle; rope [2, L, D/2]; ids int64 -> (x0, k_new, v_new, ratios [layers, S])."""
        inputs = dict(self._fixed)
        inputs.update(x_t=x.value, t=self._value(np.asarray(t, dtype=np.float32)),
                      t_freq=self._value(timestep_frequencies(float(t), self.bundle.model.dit.freq_dim)),
                      rope=self._value(rope.astype(np.float32)),
                      local_ids=self._value(local_ids.astype(np.int64)),
                      sink_ids=self._value(sink_ids.astype(np.int64)))
        x0, k_new, v_new, ratios = self._run("dit_step", inputs,
                                             {"k_new": self.k_new[0], "v_new": self.v_new[0]})
        spec = self.specs["dit_step"]
        return (OrtTensor(x0, spec.output("x0").shape), OrtTensor(k_new, spec.output("k_new").shape, self.k_new[1]),
                OrtTensor(v_new, spec.output("v_new").shape, self.v_new[1]),
                OrtTensor(ratios, spec.output("ratios").shape))

    def write_page(self, page: int, k_new: OrtTensor, v_new: OrtTensor) -> None:
        """Copy k_new / v_new [layers, L, H, D] into page `page` of every layer's pool, in place."""
        for pools, scales, new in ((self.k_pools, self.k_scales, k_new), (self.v_pools, self.v_scales, v_new)):
            if self.on_cpu:
                src = new.host if new.host is not None else new.value.numpy()
                for i, (_, host) in enumerate(pools):
                    if self.quantised:       # quantised once, here (runtime/pages.np_quantise_page)
                        host[page], scales[i][1][page] = np_quantise_page(src[i], self.kv_cache_dtype)
                    else:                    # same dtype, or rounded to bf16 pages
                        host[page] = src[i]
            else:
                self._ops.copy_pages([v for v, _ in pools], page, new.value)

    def renoise(self, x0: OrtTensor, eps: OrtTensor, sigma: float) -> OrtTensor:
        """(1 - sigma) * x0 + sigma * eps in float32, like the torch backend's tensor-scalar arithmetic."""
        if self.on_cpu:
            return self._wrap((1.0 - sigma) * x0.value.numpy() + sigma * eps.value.numpy())
        return OrtTensor(self._ops.renoise(x0.value, eps.value, sigma), x0.shape)

    def _latent_in(self, latent: OrtTensor):
        """[C, F, h, w] float32 -> the VAE's z [1, C, F, h, w] in the model dtype."""
        if self.on_cpu:
            return self._value(latent.value.numpy()[None].astype(self.np_dtype))
        return self._ops.to_model(latent.value, (1,) + latent.shape)

    def decode(self, latent: OrtTensor, first: bool) -> OrtTensor:
        """Latent [C, F, h, w] -> frames [3, T, H, W] (model dtype), streaming cache kept here."""
        name = "vae_decode_first" if first else "vae_decode"
        cache = {} if first else self.vae_cache
        frames, *cache_out = self._run(name, {"z": self._latent_in(latent), **cache})
        self.vae_cache = {f"cache_{i}": v for i, v in enumerate(cache_out)}
        return OrtTensor(frames, self.specs[name].output("frames").shape[1:])

    def decode_alone(self, latent: OrtTensor) -> OrtTensor:
        """The block without the streaming cache (vae_decode_first on zeros): 1 + 4 (F - 1) frames."""
        frames, *_ = self._run("vae_decode_first", {"z": self._latent_in(latent)})
        return OrtTensor(frames, self.specs["vae_decode_first"].output("frames").shape[1:])

    def decode_both(self, latent: OrtTensor, first: bool) -> tuple[OrtTensor, OrtTensor]:
        """The streamed and the block-alone decode at once on the CPU (ORT runs release the GIL and a
        session may run from two threads; each builds its own inputs and outputs). Block 0's streamed
        decode is the block-alone one (vae_decode_first without a cache): run once. Each result is
        what decode / decode_alone alone give, bit for bit (tests/runtime/backends)."""
        if not self.overlap_decodes:
            return super().decode_both(latent, first)
        if first:
            frames = self.decode(latent, True)
            return frames, frames
        if self._alone_pool is None:
            self._alone_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dysink-decode-alone")
        alone = self._alone_pool.submit(self.decode_alone, latent)
        try:
            frames = self.decode(latent, first)
        except BaseException:
            wait([alone])
            raise
        return frames, alone.result()

    def decode_later(self, latent: OrtTensor, first: bool) -> Future:
        """`decode` on a worker thread of its own (one: the streaming cache goes block after block)
        when `pipelines_decodes`; the latent handle is a fresh ORT output, never rebound."""
        if not self.pipelines_decodes:
            return super().decode_later(latent, first)
        if self._stream_pool is None:
            self._stream_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dysink-decode-stream")
        return self._stream_pool.submit(self.decode, latent, first)

    def encode(self, frames: OrtTensor) -> OrtTensor:
        """Frames [3, T, H, W] -> unit feature [F] through memory_encoder_t{T}."""
        name = f"memory_encoder_t{frames.shape[1]}"
        if name not in self.sessions:
            raise DysinkError(f"bundle {self.bundle.path} has no {name} graph (feature mode "
                              f"{self.stream.feature_mode}); rebuild it: {self.bundle.rebuild_command()}")
        (feature,) = self._run(name, {"frames": frames.value})
        return OrtTensor(feature, (self.feature_dim,))

    def retrieve(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames, sink_size, k):
        """Host arrays in (bank [C, F], starts [C], queries [Q, F], valid [Q]) -> (slots int64 [k], scores [k])."""
        if (sink_size, k) != (self.stream.sink_size, self.stream.top_k):
            raise DysinkError(f"the bundle's retrieve graph is built for sink_size={self.stream.sink_size}, "
                              f"top_k={self.stream.top_k}, not {sink_size}, {k}; rebuild it: "
                              f"{self.bundle.rebuild_command()}")
        feeds = {"bank_feats": bank_feats.astype(np.float32), "bank_start": bank_start.astype(np.int64),
                 "queries": queries.astype(np.float32), "query_valid": query_valid.astype(np.int32),
                 "current_start": np.asarray(current_start, dtype=np.int64),
                 "window_frames": np.asarray(window_frames, dtype=np.int64)}
        slots, scores = self.sessions["retrieve"].run(["slots", "scores"], feeds)
        return slots.astype(np.int64), scores.astype(np.float32)

    # -- the page interface of a host-side bank (runtime/host_bank.py): CPU only ------------------
    def _page_parts(self) -> list[list[np.ndarray]]:
        if not self.on_cpu:
            raise DysinkError("--bank-placement host on onnxruntime needs the CPU provider in this version (device "
                              "page copies for GPU providers are not written); use --ort-provider cpu")
        parts = [self.k_pools, self.v_pools] + ([self.k_scales, self.v_scales] if self.quantised else [])
        return [[host for _, host in pools] for pools in parts]

    def host_store(self, entries: int) -> list[np.ndarray]:
        if not self.on_cpu:
            self._page_parts()
        spec = self.specs["dit_step"]
        layers = self.model.dit.layers
        shapes = [spec.input("k_pool_0").shape[1:]] * 2 + ([spec.input("k_scale_0").shape[1:]] * 2 if self.quantised else [])
        dtypes = [self.page_np] * 2 + [np.float32] * (2 if self.quantised else 0)
        return [np.zeros((entries, layers, *shape), dtype=dt) for shape, dt in zip(shapes, dtypes)]

    def page_to_host(self, page: int, store, entry: int) -> None:
        for host, pools in zip(store, self._page_parts()):
            for i, pool in enumerate(pools):
                host[entry, i] = pool[page]

    def page_from_host(self, store, entry: int, page: int) -> None:
        for host, pools in zip(store, self._page_parts()):
            for i, pool in enumerate(pools):
                pool[page] = host[entry, i]

    def read_host_page(self, store, entry: int) -> tuple[np.ndarray, np.ndarray]:
        if self.quantised:
            return tuple(np_dequantise_pages(store[j][entry], store[j + 2][entry], np.float32) for j in (0, 1))
        return tuple(store[j][entry].astype(np.float32) for j in (0, 1))

    def graph_state(self) -> dict[str, np.ndarray]:
        if self.kv_cache_dtype != "auto":
            raise DysinkError("--dump-block: numpy has no bfloat16 or 8-bit float; dump a run of a bundle exported "
                              "with --kv-cache-dtype auto")
        return {k: np.array(v.numpy()) for k, v in self._fixed.items()}

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for pools in (self.k_pools, self.v_pools):
            # On the CPU the pools are host arrays written in place; on a GPU .numpy() copies the pool.
            layers = [(host if host is not None else value.numpy())[page] for value, host in pools]
            if self.quantised:               # what attention reads: the dequantised page
                scales = self.k_scales if pools is self.k_pools else self.v_scales
                layers = [np_dequantise_pages(q, s[1][page], np.float32) for q, s in zip(layers, scales)]
            out.append(np.stack(layers).astype(np.float32))
        return out[0], out[1]

    def close(self) -> None:
        for pool in ("_alone_pool", "_stream_pool"):
            if getattr(self, pool, None) is not None:
                getattr(self, pool).shutdown(wait=True)
                setattr(self, pool, None)
        for name in ("k_pools", "v_pools", "k_scales", "v_scales", "k_new", "v_new", "_fixed", "vae_cache", "sessions", "_ops"):
            if hasattr(self, name):
                delattr(self, name)

    def to_numpy(self, handle: OrtTensor) -> np.ndarray:
        # A copy: on CPU .numpy() is a view of a buffer the next step may overwrite (k_new / v_new).
        return np.array(handle.value.numpy(), dtype=np.float32).reshape(handle.shape)


_VAE_GRAPHS = ("vae_decode_first", "vae_decode")


def session_options(ort, threads: int | None = None, profile_prefix: str | None = None):
    """The SessionOptions every ONNX Runtime session of the project uses (backend, check, prompts,
    bench): quiet logs, `threads` intra-op threads (None: ORT's choice, one per physical core), and
    no spinning. A pool thread that spins after its run keeps a core busy for a while; the loop runs
    six graphs in turn, each with its own pool, so on 2 cores the spinning threads of the graph that
    just ran steal the cores of the next one (2 threads ran at half the speed of 1 here; with spinning
    off, 2 threads are faster than 1: README "Benchmarks"). ORT's Python API has no global pool."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3        # fp16 graphs warn about CPU kernels ORT upcasts; not actionable
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def load_session(ort, bundle: Bundle, name: str, source, opts, providers, fp32_io: bool = False):
    """An InferenceSession for graph `name`, its inputs and outputs checked against the manifest's
    I/O contract (names, dtypes, static shapes: graph_files.check_graph_io) before anything binds
    them; a file ONNX Runtime cannot load (truncated, not ONNX, an op it lacks) is one line naming
    the graph and the rebuild command. `fp32_io`: `source` is the float32 twin of a bf16 graph."""
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as exc:   # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise DysinkError(f"bundle {bundle.path}: ONNX Runtime cannot load graph {name} ({first}); "
                          f"rebuild it: {bundle.rebuild_command()}") from None
    check_graph_io(bundle, name, *session_io(session), fp32_io=fp32_io)
    return session


class _DeviceOps:
    """The few elementwise operations the loop needs on a GPU provider, as tiny ONNX graphs run by
    the same provider (keeps data on the device), plus page writes as device-to-device copies."""

    def __init__(self, ort, providers, precision: str, device: tuple[str, int]):
        from onnx import TensorProto, helper

        self.ort, self.device = ort, device
        self.itemsize = np.dtype(_MODEL_NP[precision]).itemsize
        elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[precision]
        f32 = TensorProto.FLOAT

        def session(nodes, inputs, outputs):
            graph = helper.make_graph(nodes, "op", inputs, outputs)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            return ort.InferenceSession(model.SerializeToString(), providers=list(providers))

        vi = helper.make_tensor_value_info
        self._renoise = session(
            [helper.make_node("Mul", ["x0", "a"], ["p"]), helper.make_node("Mul", ["eps", "b"], ["q"]),
             helper.make_node("Add", ["p", "q"], ["y"])],
            [vi("x0", f32, None), vi("eps", f32, None), vi("a", f32, []), vi("b", f32, [])], [vi("y", f32, None)])
        self._cast = session([helper.make_node("Cast", ["x"], ["y"], to=elem), helper.make_node(
            "Unsqueeze", ["y", "axes"], ["z"])], [vi("x", f32, None), vi("axes", TensorProto.INT64, [1])],
            [vi("z", elem, None)])

    def _run(self, sess, feeds: dict) -> Any:
        io = sess.io_binding()
        for k, v in feeds.items():
            io.bind_ortvalue_input(k, v)
        io.bind_output(sess.get_outputs()[0].name, *self.device)
        sess.run_with_iobinding(io)
        return io.get_outputs()[0]

    def _scalar(self, x: float):
        return self.ort.OrtValue.ortvalue_from_numpy(np.asarray(x, dtype=np.float32), *self.device)

    def renoise(self, x0, eps, sigma: float):
        return self._run(self._renoise, {"x0": x0, "eps": eps, "a": self._scalar(1.0 - sigma),
                                         "b": self._scalar(sigma)})

    def to_model(self, latent, shape):
        axes = self.ort.OrtValue.ortvalue_from_numpy(np.array([0], dtype=np.int64), *self.device)
        return self._run(self._cast, {"x": latent, "axes": axes})

    def copy_pages(self, pools: list, page: int, new) -> None:
        """new [layers, L, H, D] -> pools[i][page] for every layer i (contiguous, same dtype)."""
        from polygraphy import cuda

        page_bytes = int(np.prod(new.shape()[1:])) * self.itemsize
        for i, pool in enumerate(pools):
            cuda.wrapper().memcpy(pool.data_ptr() + page * page_bytes, new.data_ptr() + i * page_bytes,
                                  page_bytes, cuda.MemcpyKind.DeviceToDevice)
