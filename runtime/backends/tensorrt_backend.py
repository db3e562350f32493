"""The `tensorrt` backend: a bundle's engines (`dysink-export build`) with `libdysink_plugins.so`.

numpy + tensorrt + cuda-python only: no PyTorch, no ONNX Runtime. Written to the TensorRT 10.3 ..
11.x Python API (every name checked against both bindings: tests/export/test_trt_build.py) and
cuda-python's runtime API. **Never run yet**: the development and CI machines have neither TensorRT
nor a GPU. `make gpu-check` runs it against the torch backend where both exist.

Device memory is allocated once in `start` and bound by address:
  * K/V pools (one per layer per K/V), text K/V (the text_encoder writes straight into the buffers
    dit_step reads), every engine's I/O, the t / t_freq of every timestep (uploaded once);
  * latents live in a ring of preallocated buffers: a step's output never aliases its input, and
    the x0 the loop still holds survives the clean pass;
  * the VAE streaming cache ping-pongs between two buffer sets (cache_out of one block is the
    cache of the next, by rebinding addresses); the block-alone decode writes its cache to scratch.
A block's steps are enqueued on one stream with no synchronisation between them: renoise and the
latent -> z cast are tiny engines built at start from TensorRT network layers; page writes are
device-to-device copies. The host waits only in `to_numpy` and `retrieve` (block boundaries).

8-bit K/V pages (bundles exported with `--kv-cache-dtype int8 | fp8`): int8 / e4m3 pools with float32
scale pools `k_scale_i` / `v_scale_i` [P, L, H] (dit_step inputs after the pools); an unwritten page
is zeros with scales 1 (the onnxruntime backend's start); write_page quantises the block's K/V once on
the stream with the `quantise` helper engine (tensorrt_ops: ops/kv_pages.quantise_page as TensorRT
layers), then copies each layer's rows and scales into the pools at the page offset. The host-side
bank carries the scales with the pages. **None of the 8-bit path has run on TensorRT or a GPU either.**

`cuda_graph=True` (`dysink-run --cuda-graph`) replays engine launches as CUDA graphs
(`cuda_graphs.GraphCache`). The pieces live beside this module: `cuda` (the cuda-python wrapper and
`DeviceTensor`), `cuda_graphs`, `tensorrt_ops` (the helper engines), `engine_checks` (may an engine
run here). tensorrt and cuda-python are imported when the backend is made, not with the module.
"""

from __future__ import annotations

import numpy as np

from ...bundle import Bundle
from ...errors import DysinkError
from ...graphs import QUANTISED_KV_DTYPES
from ...rope import timestep_frequencies
from ..pages import np_dequantise_pages, np_page_dtype
from .base import Backend
from .cuda import _NP, DeviceTensor, _Cuda
from .cuda_graphs import GraphCache
from .engine_checks import NO_TENSORRT, check_engine_entry, check_engine_io, compute_capability
from .plugin_library import bundle_plugin_library, load_plugin_library
from .tensorrt_ops import _Ops, page_type_refusal

_BYTE_PAGES = ("int8", "float8e4m3fn")      # 8-bit pool dtypes (contract names), which DeviceTensor does not size


def _nbytes(shape, dtype: str) -> int:
    if dtype in _BYTE_PAGES:
        return int(np.prod(tuple(shape), dtype=np.int64))
    return DeviceTensor(0, tuple(shape), dtype).nbytes


def _host_input(t, array) -> np.ndarray:
    """A host feed as the bytes of engine input `t`: bf16 from float32 values, 8-bit pages from their
    values (int8) or bits (e4m3: numpy has none; an ml_dtypes array or an OrtValue over uint8 bits)."""
    if t.dtype == "bfloat16":
        return (np.asarray(array, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncation-free: inputs are bf16 values
    if t.dtype not in _BYTE_PAGES:
        return np.array(array.astype(_NP[t.dtype]), order="C")
    if not isinstance(array, np.ndarray) and hasattr(array, "numpy"):
        array = array.numpy()
    host = np.ascontiguousarray(np.asarray(array).astype(np.int8) if t.dtype == "int8" else np.asarray(array))
    if host.itemsize != 1:
        raise DysinkError(f"input {t.name} holds {t.dtype} pages: feed their 8-bit values or bits, not {host.dtype}")
    return host.view(np.uint8)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, bundle: Bundle, plugins: str | None = None, cuda_graph: bool = False):
        if (refusal := page_type_refusal(bundle)) is not None:
            raise DysinkError(refusal)
        try:
            import tensorrt as trt
        except ImportError:
            raise DysinkError(NO_TENSORRT) from None
        self.trt, self.bundle = trt, bundle
        self.stream, self.model, self.specs = bundle.stream, bundle.model, bundle.specs
        self.md = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[bundle.precision]
        self.kv_cache_dtype = bundle.kv_cache_dtype
        self.quantised = bundle.kv_cache_dtype in QUANTISED_KV_DTYPES
        cc = compute_capability()
        if (refusal := page_type_refusal(bundle, cc)) is not None:
            raise DysinkError(refusal)
        entries = {g: check_engine_entry(bundle, g, trt.__version__, cc) for g in bundle.graphs}
        self.cuda = _Cuda()
        self.graphs = GraphCache(self.cuda.rt, self.cuda.stream) if cuda_graph else None
        self._bound: dict[str, dict[str, int]] = {}
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        # The library the engines were built with, resolved inside the bundle (not the caller's working
        # directory), loaded once per process; native engines (build --no-plugins) need none.
        libraries = {lib for g, e in entries.items()
                     if (lib := bundle_plugin_library(bundle, e, f"dysink-export build --bundle {bundle.path}"))}
        for library in sorted({plugins} if plugins else libraries):
            load_plugin_library(self.runtime.get_plugin_registry(), library)
        self.engines, self.contexts = {}, {}
        for graph, entry in entries.items():
            rebuild = f"dysink-export build --bundle {bundle.path} --graph {graph}"
            engine = self.runtime.deserialize_cuda_engine((bundle.path / entry["file"]).read_bytes())
            if engine is None:
                raise DysinkError(f"engine {entry['file']} does not deserialize (see TensorRT's messages); "
                                  f"rebuild it: {rebuild}")
            check_engine_io(trt, engine, self.specs[graph], graph, rebuild)
            context = engine.create_execution_context()
            if context is None:
                raise DysinkError(f"engine {entry['file']}: TensorRT could not create an execution context (device "
                                  f"memory?; see its messages above); free device memory or rebuild it: {rebuild}")
            self.engines[graph] = engine
            self.contexts[graph] = context
        self._ops = _Ops(trt, self.logger, self.runtime, self.md, self.specs["dit_step"].input("x_t").shape,
                         self._launch, pages=self.kv_cache_dtype, kv_shape=self.specs["dit_step"].output("k_new").shape)
        self.buffers: dict[tuple[str, str], DeviceTensor] = {}

    # -- buffers and execution ----------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.model.pe.output_dim or self.model.pe.width

    def _buffer(self, graph: str, name: str, output: bool = False) -> DeviceTensor:
        key = (graph, name)
        if key not in self.buffers:
            spec = self.specs[graph].output(name) if output else self.specs[graph].input(name)
            self.buffers[key] = DeviceTensor(self.cuda.alloc(_nbytes(spec.shape, spec.dtype)), spec.shape, spec.dtype)
        return self.buffers[key]

    def _bind(self, graph: str, name: str, tensor: DeviceTensor) -> None:
        if not self.contexts[graph].set_tensor_address(name, tensor.ptr):
            raise DysinkError(f"engine {graph} has no tensor {name}; rebuild it from this bundle")
        self._bound.setdefault(graph, {})[name] = int(tensor.ptr)

    def _launch(self, graph: str, context, bound: dict[str, int]) -> None:
        """execute_async_v3 on the stream, or the CUDA graph of that launch with these addresses."""
        if self.graphs is None:
            if not context.execute_async_v3(int(self.cuda.stream)):
                raise DysinkError(f"TensorRT failed to enqueue {graph} (see its messages above)")
            return
        key = (graph, tuple(sorted(bound.items())))
        self.graphs.launch(key, lambda: context.execute_async_v3(int(self.cuda.stream)))

    def _run(self, graph: str) -> None:
        self._launch(graph, self.contexts[graph], self._bound.get(graph, {}))

    def start(self, prompt_embeds: np.ndarray, num_pages: int) -> None:
        spec = self.specs["dit_step"]
        if num_pages != spec.input("k_pool_0").shape[0]:
            raise DysinkError(f"the engines hold {spec.input('k_pool_0').shape[0]} pool pages, the stream asked for "
                              f"{num_pages}; rebuild the bundle: {self.bundle.rebuild_command()}")
        for t in spec.inputs:                      # pools, text K/V, ids, rope, t, t_freq, x_t: bound once
            self._bind("dit_step", t.name, self._buffer("dit_step", t.name))
        for t in spec.outputs:
            self._bind("dit_step", t.name, self._buffer("dit_step", t.name, output=True))
        # The text encoder writes straight into dit_step's text_k / text_v.
        prompt = self._buffer("text_encoder", "prompt_embeds")
        self.cuda.upload(prompt.ptr, np.ascontiguousarray(prompt_embeds, dtype=np.float32))
        self._bind("text_encoder", "prompt_embeds", prompt)
        for name in ("text_k", "text_v"):
            self._bind("text_encoder", name, self.buffers[("dit_step", name)])
        self._run("text_encoder")
        # Every timestep's t and t_freq, uploaded once.
        self._times = {}
        for t in [*self.stream.timesteps(), 0.0]:
            self._times[float(t)] = self._time_buffers(float(t))
        # Latent ring, VAE caches (two sets), scratch cache for the block-alone decode.
        latent = spec.input("x_t")
        latent_bytes = DeviceTensor(0, latent.shape, "float32").nbytes
        self._ring = [DeviceTensor(self.cuda.alloc(latent_bytes), latent.shape, "float32") for _ in range(4)]
        self._ring_next = 0
        vae = self.specs["vae_decode"]
        self._caches = [[DeviceTensor(self.cuda.alloc(DeviceTensor(0, o.shape, o.dtype).nbytes), o.shape, o.dtype)
                         for o in vae.outputs if o.name.startswith("cache_out_")] for _ in range(2)]
        self._scratch = [DeviceTensor(self.cuda.alloc(c.nbytes), c.shape, c.dtype) for c in self._caches[0]]
        self._cache_current = 0
        self._rope_host = self._ids_host = None
        if self.quantised:   # pools are zeroed (alloc); scales 1, as the onnxruntime backend starts them
            kv, scale = spec.output("k_new").shape, spec.input("k_scale_0")
            self._q = DeviceTensor(self.cuda.alloc(_nbytes(kv, "int8")), tuple(kv), spec.input("k_pool_0").dtype)
            self._s = DeviceTensor(self.cuda.alloc(_nbytes(kv[:3], "float32")), tuple(kv[:3]), "float32")
            first, *rest = [self.buffers[("dit_step", f"{k}_scale_{i}")] for k in "kv" for i in range(kv[0])]
            self.cuda.upload(first.ptr, np.ones(scale.shape, np.float32))
            for buf in rest:
                self.cuda.copy(buf.ptr, first.ptr, _nbytes(scale.shape, "float32"))
        self.cuda.sync()

    def _time_buffers(self, t: float) -> tuple[DeviceTensor, DeviceTensor]:
        tb = DeviceTensor(self.cuda.alloc(4), (), "float32")
        self.cuda.upload(tb.ptr, np.asarray([t], dtype=np.float32))
        freq = timestep_frequencies(t, self.model.dit.freq_dim)
        fb = DeviceTensor(self.cuda.alloc(freq.nbytes), freq.shape, "float32")
        self.cuda.upload(fb.ptr, freq)
        return tb, fb

    def _latent_out(self, *avoid: DeviceTensor) -> DeviceTensor:
        """The next ring buffer that is none of `avoid` (a step never writes over its input)."""
        for _ in range(len(self._ring)):
            t = self._ring[self._ring_next]
            self._ring_next = (self._ring_next + 1) % len(self._ring)
            if all(t.ptr != a.ptr for a in avoid):
                return t
        raise AssertionError("latent ring exhausted")

    def upload(self, array: np.ndarray) -> DeviceTensor:
        if tuple(array.shape) != self._ring[0].shape:
            raise DysinkError(f"tensorrt backend: unexpected upload of shape {array.shape}")
        t = self._latent_out()
        self._keep = np.ascontiguousarray(array, dtype=np.float32)   # alive until the copy is done
        self.cuda.upload(t.ptr, self._keep)
        return t

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        """Enqueued on the stream; nothing waits. -> (x0, k_new, v_new, ratios) device tensors."""
        g = "dit_step"
        if float(t) not in self._times:
            self._times[float(t)] = self._time_buffers(float(t))
        tb, fb = self._times[float(t)]
        self._bind(g, "t", tb)
        self._bind(g, "t_freq", fb)
        self._bind(g, "x_t", x)
        # rope and ids change once per block (sink_ids also for the clean pass): upload when they change.
        if self._rope_host is None or not np.array_equal(self._rope_host, rope):
            self._rope_host = np.ascontiguousarray(rope, dtype=np.float32)
            self.cuda.upload(self.buffers[(g, "rope")].ptr, self._rope_host)
        ids = (np.ascontiguousarray(local_ids, dtype=np.int64), np.ascontiguousarray(sink_ids, dtype=np.int64))
        if self._ids_host is None or any(not np.array_equal(a, b) for a, b in zip(self._ids_host, ids)):
            self._ids_host = ids
            self.cuda.upload(self.buffers[(g, "local_ids")].ptr, ids[0])
            self.cuda.upload(self.buffers[(g, "sink_ids")].ptr, ids[1])
        x0 = self._latent_out(x)
        self._bind(g, "x0", x0)
        self._run(g)
        return (x0, self.buffers[(g, "k_new")], self.buffers[(g, "v_new")], self.buffers[(g, "ratios")])

    def write_page(self, page: int, k_new: DeviceTensor, v_new: DeviceTensor) -> None:
        """k_new / v_new [layers, L, H, D] into page `page` of every layer's pool: device copies on the stream.
        8-bit pages: the quantise engine first, into one scratch pair (the stream runs V's quantise after K's
        copies), then each layer's rows and scales (never run: no TensorRT or GPU here)."""
        layers = k_new.shape[0]
        for kind, new in (("k", k_new), ("v", v_new)):
            src, n = new.ptr, new.nbytes // layers
            if self.quantised:
                self._ops.quantise(new.ptr, self._q.ptr, self._s.ptr)
                src, n, sn = self._q.ptr, _nbytes(self._q.shape[1:], self._q.dtype), _nbytes(self._s.shape[1:], "float32")
                for i in range(layers):
                    self.cuda.copy(self.buffers[("dit_step", f"{kind}_scale_{i}")].ptr + page * sn, self._s.ptr + i * sn, sn)
            for i in range(layers):
                self.cuda.copy(self.buffers[("dit_step", f"{kind}_pool_{i}")].ptr + page * n, src + i * n, n)

    def renoise(self, x0: DeviceTensor, eps: DeviceTensor, sigma: float) -> DeviceTensor:
        out = self._latent_out(x0, eps)
        self._ops.renoise(self.cuda, x0.ptr, eps.ptr, out.ptr, sigma)
        return out

    def _decode(self, graph: str, latent: DeviceTensor, cache_in: list | None, cache_out: list) -> DeviceTensor:
        z = self._buffer(graph, "z")
        self._ops.to_model(self.cuda, latent.ptr, z.ptr)
        self._bind(graph, "z", z)
        for i, c in enumerate(cache_in or []):
            self._bind(graph, f"cache_{i}", c)
        for i, c in enumerate(cache_out):
            self._bind(graph, f"cache_out_{i}", c)
        frames = self._buffer(graph, "frames", output=True)
        self._bind(graph, "frames", frames)
        self._run(graph)
        return DeviceTensor(frames.ptr, frames.shape[1:], frames.dtype)

    def decode(self, latent: DeviceTensor, first: bool) -> DeviceTensor:
        if first:
            out = self._caches[self._cache_current]
            frames = self._decode("vae_decode_first", latent, None, out)
        else:
            cur, nxt = self._caches[self._cache_current], self._caches[1 - self._cache_current]
            frames = self._decode("vae_decode", latent, cur, nxt)
            self._cache_current = 1 - self._cache_current
        return frames

    def decode_alone(self, latent: DeviceTensor) -> DeviceTensor:
        return self._decode("vae_decode_first", latent, None, self._scratch)

    def encode(self, frames: DeviceTensor) -> DeviceTensor:
        graph = f"memory_encoder_t{frames.shape[1]}"
        if graph not in self.contexts:
            raise DysinkError(f"bundle {self.bundle.path} has no {graph} engine; rebuild it: "
                              f"dysink-export build --bundle {self.bundle.path}")
        self._bind(graph, "frames", frames)          # the decoder's output buffer, read in place
        feature = self._buffer(graph, "feature", output=True)
        self._bind(graph, "feature", feature)
        self._run(graph)
        return DeviceTensor(feature.ptr, (self.feature_dim,), "float32")

    def retrieve(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames, sink_size, k):
        if (sink_size, k) != (self.stream.sink_size, self.stream.top_k):
            raise DysinkError(f"the retrieve engine is built for sink_size={self.stream.sink_size}, "
                              f"top_k={self.stream.top_k}; rebuild the bundle: {self.bundle.rebuild_command()}")
        feeds = {"bank_feats": bank_feats.astype(np.float32), "bank_start": bank_start.astype(np.int64),
                 "queries": queries.astype(np.float32), "query_valid": query_valid.astype(np.int32),
                 "current_start": np.asarray(current_start, dtype=np.int64),
                 "window_frames": np.asarray(window_frames, dtype=np.int64)}
        keep = []
        for name, array in feeds.items():
            buf = self._buffer("retrieve", name)
            keep.append(np.array(array, order="C"))
            self.cuda.upload(buf.ptr, keep[-1])
            self._bind("retrieve", name, buf)
        outs = {}
        for name in ("slots", "scores"):
            buf = self._buffer("retrieve", name, output=True)
            self._bind("retrieve", name, buf)
            outs[name] = buf
        self._run("retrieve")
        slots = self.cuda.download(np.empty(self.stream.top_k, np.int64), outs["slots"].ptr)
        scores = self.cuda.download(np.empty(self.stream.top_k, np.float32), outs["scores"].ptr)
        return slots, scores

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One engine on host inputs -> host outputs (float32 for floating outputs): `dysink-export check --engines`.
        Uses buffers of its own, so a stream's state is untouched."""
        spec = self.specs[graph]
        keep = []
        for t in spec.inputs:
            buf = DeviceTensor(self.cuda.alloc(_nbytes(t.shape, t.dtype), zero=False), t.shape, t.dtype)
            keep.append(_host_input(t, feeds[t.name]))
            self.cuda.upload(buf.ptr, keep[-1])
            self._bind(graph, t.name, buf)
        outs = []
        for t in spec.outputs:
            buf = DeviceTensor(self.cuda.alloc(DeviceTensor(0, t.shape, t.dtype).nbytes), t.shape, t.dtype)
            self._bind(graph, t.name, buf)
            outs.append(buf)
        if not self.contexts[graph].execute_async_v3(int(self.cuda.stream)):   # one-off: never a graph
            raise DysinkError(f"TensorRT failed to enqueue {graph} (see its messages above)")
        return [self.to_numpy(o) if o.dtype != "int64" else self.cuda.download(np.empty(o.shape, np.int64), o.ptr)
                for o in outs]

    def set_prompt(self, prompt_embeds: np.ndarray) -> None:
        """Rerun the text encoder into the text_k / text_v buffers dit_step reads (enqueued)."""
        prompt = self.buffers[("text_encoder", "prompt_embeds")]
        self._prompt_host = np.ascontiguousarray(prompt_embeds, dtype=np.float32)   # alive until copied
        self.cuda.upload(prompt.ptr, self._prompt_host)
        self._run("text_encoder")

    def recache_window(self, x, t, rope, key_valid, blocks):
        g = "dit_recache"
        if g not in self.contexts:
            raise DysinkError(f"bundle {self.bundle.path} has no dit_recache engine, which prompt switches need; "
                              f"export with --interactive and build: {self.bundle.rebuild_command()} --interactive")
        keep = {"x": np.ascontiguousarray(x, dtype=np.float32), "t": np.asarray([t], dtype=np.float32),
                "t_freq": timestep_frequencies(float(t), self.model.dit.freq_dim),
                "rope": np.ascontiguousarray(rope, dtype=np.float32),
                "key_valid": np.ascontiguousarray(key_valid, dtype=np.bool_)}
        self._recache_host = keep                                        # alive until the copies are done
        for name, array in keep.items():
            buf = self._buffer(g, name)
            self.cuda.upload(buf.ptr, array)
            self._bind(g, name, buf)
        for name in ("text_k", "text_v"):
            self._bind(g, name, self.buffers[("dit_step", name)])
        outs = {name: self._buffer(g, name, output=True) for name in ("k", "v")}
        for name, buf in outs.items():
            self._bind(g, name, buf)
        self._run(g)
        # [layers, N*Lf, H, D] -> per block [layers, L, H, D] scratch (write_page wants whole layers).
        kv_spec = self.specs["dit_step"].output("k_new")
        layers, per = kv_spec.shape[0], kv_spec.shape[1]
        row = DeviceTensor(0, kv_spec.shape[2:], kv_spec.dtype).nbytes          # one token, all heads
        total = outs["k"].shape[1]
        if not hasattr(self, "_recache_scratch"):
            self._recache_scratch = [tuple(DeviceTensor(self.cuda.alloc(DeviceTensor(0, kv_spec.shape, kv_spec.dtype).nbytes),
                                                        kv_spec.shape, kv_spec.dtype) for _ in range(2))
                                     for _ in range(total // per)]
        result = []
        for j in range(blocks):
            pair = self._recache_scratch[j]
            for src, dst in zip((outs["k"], outs["v"]), pair):
                for i in range(layers):
                    self.cuda.copy(dst.ptr + i * per * row, src.ptr + (i * total + j * per) * row, per * row)
            result.append(pair)
        return result

    # -- the page interface of a host-side bank (runtime/host_bank.py). Written to the CUDA runtime
    # API, never run here (no GPU, no TensorRT): the copies are queued on the engines' own stream
    # (ordered with the launches, no host sync; not overlapped with them as a side stream would be).
    # An entry holds, one layer after another: the K pages, the V pages and, for 8-bit pages, the K and V
    # scales ([L, H] float32 per layer): what attention reads of a page, so a page back from the host
    # dequantises as it did before it left.
    def _page_parts(self) -> list[tuple[str, int]]:
        """(dit_step input prefix, bytes of one page in one layer) for each part of a page."""
        spec = self.specs["dit_step"]
        names = ("k_pool", "v_pool") + (("k_scale", "v_scale") if self.quantised else ())
        return [(n, _nbytes(spec.input(f"{n}_0").shape[1:], spec.input(f"{n}_0").dtype)) for n in names]

    def host_store(self, entries: int) -> dict:
        entry_bytes = self.model.dit.layers * sum(n for _, n in self._page_parts())
        nbytes = entries * entry_bytes
        ptr = int(self.cuda._ok(self.cuda.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes} bytes)"))
        self._host_stores = getattr(self, "_host_stores", []) + [ptr]
        return {"ptr": ptr, "entry_bytes": entry_bytes}

    def _page_copies(self, page: int, store: dict, entry: int):
        host = store["ptr"] + entry * store["entry_bytes"]
        for name, n in self._page_parts():
            for i in range(self.model.dit.layers):
                yield self.buffers[("dit_step", f"{name}_{i}")].ptr + page * n, host, n
                host += n

    def page_to_host(self, page: int, store: dict, entry: int) -> None:
        for device, host, n in self._page_copies(page, store, entry):
            self.cuda._ok(self.cuda.rt.cudaMemcpyAsync(host, device, n, self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                                       self.cuda.stream), "page to host")

    def page_from_host(self, store: dict, entry: int, page: int) -> None:
        for device, host, n in self._page_copies(page, store, entry):
            self.cuda._ok(self.cuda.rt.cudaMemcpyAsync(device, host, n, self.cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                                       self.cuda.stream), "page from host")

    def _as_float(self, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """[K, V(, K scales, V scales)] raw bytes per layer -> (K, V) float32 [layers, L, H, D], dequantised."""
        spec = self.specs["dit_step"]
        pool = spec.input("k_pool_0")
        if self.quantised:
            q = [b.view(np_page_dtype(self.kv_cache_dtype, None)).reshape(pool.shape[1:]) for b in parts[0] + parts[1]]
            sc = [b.view(np.float32).reshape(pool.shape[1:3]) for b in parts[2] + parts[3]]
            kv = [np_dequantise_pages(x, s, np.float32) for x, s in zip(q, sc)]
        elif pool.dtype == "bfloat16":
            kv = [(b.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(pool.shape[1:]) for b in parts[0] + parts[1]]
        else:
            kv = [b.view(_NP[pool.dtype]).reshape(pool.shape[1:]).astype(np.float32) for b in parts[0] + parts[1]]
        layers = self.model.dit.layers
        return np.stack(kv[:layers]), np.stack(kv[layers:])

    def read_host_page(self, store: dict, entry: int) -> tuple[np.ndarray, np.ndarray]:
        import ctypes

        self.cuda.sync()
        raw = (ctypes.c_char * store["entry_bytes"]).from_address(store["ptr"] + entry * store["entry_bytes"])
        arr, parts, at = np.frombuffer(raw, dtype=np.uint8).copy(), [], 0
        for _, n in self._page_parts():
            parts.append([arr[at + i * n:at + (i + 1) * n] for i in range(self.model.dit.layers)])
            at += n * self.model.dit.layers
        return self._as_float(parts)

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        return self._as_float([[self.cuda.download(np.empty(n, np.uint8), self.buffers[("dit_step", f"{name}_{i}")].ptr + page * n)
                                for i in range(self.model.dit.layers)] for name, n in self._page_parts()])

    def to_numpy(self, handle: DeviceTensor) -> np.ndarray:
        if handle.dtype == "bfloat16":
            bits = self.cuda.download(np.empty(handle.shape, np.uint16), handle.ptr)
            return (bits.astype(np.uint32) << 16).view(np.float32)
        host = self.cuda.download(np.empty(handle.shape, _NP[handle.dtype]), handle.ptr)
        return host.astype(np.float32)

    def close(self) -> None:
        self.cuda.sync()
        for ptr in getattr(self, "_host_stores", []):      # after the sync: no copy still reads them
            self.cuda.rt.cudaFreeHost(ptr)
        self._host_stores = []
        if self.graphs is not None:
            self.graphs.close()
        self.cuda.close()
