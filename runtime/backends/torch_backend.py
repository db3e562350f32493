"""The `torch` backend: the PyTorch reference models, on CPU or CUDA.

Imports torch, so the runtime imports this module only when asked for the
torch backend. On CUDA nothing in `dit_step`, `renoise` or `write_page`
reads back to the host: the loop syncs once per block (`to_numpy`). Set
`sync_debug = "error"` (or "warn") to have torch check that inside the loop's
`denoise_scope` (torch.cuda.set_sync_debug_mode, the GPU kit's stage c), and
`phase_sync = True` for exact per-phase device times (`fence` synchronizes).
`cuda_graph=True` (CUDA) replays every dit_step as one captured CUDA graph (GraphedStep).

The two custom ops run either as their PyTorch references or as the Triton
kernels (`kernels="triton"`, JIT-compiled on CUDA; on CPU only under
TRITON_INTERPRET=1, for tests). `"auto"` picks the kernels on CUDA and the
references on CPU; nothing else in the loop changes.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ...config import StreamConfig
from ...models.factory import DySinkModels
from ...models.dit import DiTStep, WindowRecache
from ...errors import DysinkError
from ...ops.kv_pages import dequantise_pages, is_quantised, page_storage, quantise_page
from ...ops.retrieve_sinks import retrieve_sinks_ref
from ...plugins.variants import check_head_dim, check_retrieval
from ...rope import timestep_frequencies
from ..spec import KERNELS
from .base import Backend



def resolve_kernels(kernels: str, device: torch.device) -> str:
    """'auto' | 'triton' | 'reference' -> 'triton' | 'reference' for this device, or a clear error."""
    if kernels not in KERNELS:
        raise DysinkError(f"--kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "reference" or (kernels == "auto" and device.type != "cuda"):
        return "reference"
    try:
        from ...plugins import launch  # lazy: triton (optional)
    except ImportError:
        if kernels == "auto":
            return "reference"
        raise DysinkError("--kernels triton needs Triton: pip install 'dysink-deploy[kernels]' "
                          "(or use --kernels reference)") from None
    if device.type == "cpu" and not launch.interpreted():
        raise DysinkError("--kernels triton on the CPU runs only under Triton's interpreter "
                          "(TRITON_INTERPRET=1, slow: for tests); use --kernels reference or --device cuda")
    return "triton"


def cuda_capture(fn, warmup: int = 2):
    """(replay, outputs) of `fn` captured as a CUDA graph, after `warmup` eager runs on a side stream
    (what torch.cuda.graphs asks for: lazy initialisations, Triton's JIT compile, cuBLAS workspaces
    happen outside the capture). The capture synchronizes the device (set-up, not a step): torch's
    sync debug mode is off meanwhile."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = fn()
        return graph.replay, outputs
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def eager_capture(fn):
    """A stand-in for cuda_capture on the CPU (tests): the same contract (outputs are fixed tensors,
    overwritten by each replay), computed eagerly."""
    outputs = fn()

    def replay():
        for buf, new in zip(outputs, fn()):
            buf.copy_(new)

    return replay, outputs


class GraphedStep:
    """dit_step replayed as one CUDA graph (RunSpec.cuda_graph on the torch backend).

    Captured at the first call over static copies of its inputs (x_t, t, rope, local and sink page
    ids); later calls copy their inputs into those buffers and replay. Every step of every block
    has these shapes (DESIGN.md, static shapes), and the pools and text K/V are the same tensors
    throughout a stream, so one graph serves the denoising steps, the clean pass and the recache of
    bank entries. x0 and the gate ratios are cloned out (the next replay overwrites the graph's
    outputs); k_new / v_new are the graph's own buffers, valid until the next dit_step (the loop
    writes them into a page right away)."""

    def __init__(self, fn, capture=cuda_capture):
        self.fn, self.capture = fn, capture
        self.inputs = self.outputs = self.replay = None

    def __call__(self, *args):
        if self.replay is None:
            self.inputs = [a.clone() for a in args]
            self.replay, self.outputs = self.capture(lambda: self.fn(*self.inputs))
        else:
            for buf, a in zip(self.inputs, args):
                if buf.shape != a.shape or buf.dtype != a.dtype:
                    raise DysinkError(f"a CUDA-graphed dit_step got an input of {a.dtype} {tuple(a.shape)}, captured "
                                      f"with {buf.dtype} {tuple(buf.shape)}; run without cuda_graph")
                buf.copy_(a, non_blocking=True)
        self.replay()
        x0, k_new, v_new, ratios = self.outputs
        return x0.clone(), k_new, v_new, ratios.clone()


class TorchBackend(Backend):
    name = "torch"
    threads: int | None = None   # intra-op threads inside thread_scope (None: the calling thread's)

    def __init__(self, models: DySinkModels, stream: StreamConfig, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, kernels: str = "auto", cuda_graph: bool = False,
                 capture=None, kv_cache_dtype: str = "auto"):
        """cuda_graph: replay each dit_step as one CUDA graph (GraphedStep; CUDA only). `capture`:
        how a graph is made (default cuda_capture; the CPU tests pass eager_capture).
        kv_cache_dtype: the pools' storage (ops/kv_pages.py): 8-bit pages are quantised once in
        write_page and dequantised inside GatedSinkAttention."""
        self.device = torch.device(device)
        if cuda_graph and self.device.type != "cuda" and capture is None:
            raise DysinkError("cuda_graph on the torch backend needs a CUDA device (it replays GPU launches)")
        self.cuda_graph, self._capture = bool(cuda_graph), capture or cuda_capture
        self.kernels = resolve_kernels(kernels, self.device)
        self.kv_cache_dtype = kv_cache_dtype
        self.page_dtype = page_storage(kv_cache_dtype, dtype)
        self.quantised = is_quantised(kv_cache_dtype)
        self.models = models.to(device=device, dtype=dtype).eval()
        self.stream = stream
        self.dtype = dtype
        if self.kernels == "triton":
            from ...plugins import launch  # lazy: triton (optional)

            check_head_dim(models.dit.cfg.head_dim)
            check_retrieval(stream.bank_capacity, stream.top_k)
            self._attention, self._retrieve = launch.gated_sink_attention, launch.retrieve_sinks
        else:
            self._attention, self._retrieve = None, retrieve_sinks_ref
        self.step_module = DiTStep(self.models.dit, stream, attention=self._attention)
        self.lat_hw = stream.latent_hw
        self.sync_debug: str | None = None     # CUDA: torch's sync debug mode inside denoise_scope
        self.phase_sync = False                # CUDA: fence() synchronizes (exact per-phase times)

    @contextlib.contextmanager
    def denoise_scope(self):
        if self.sync_debug is None or self.device.type != "cuda":
            yield
            return
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(self.sync_debug)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(before)

    @contextlib.contextmanager
    def thread_scope(self):
        """torch.set_num_threads(threads) for the scope only: the count changes results (reductions
        split per thread), and it belongs to this stream, not to whichever stream set it last. With
        OpenMP the count is the calling thread's; the BLAS library's may be process-wide, so streams
        run at once in threads should share one `threads` value (docs/python-api.md)."""
        before = torch.get_num_threads()
        if not self.threads or before == self.threads:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def fence(self) -> None:
        if self.phase_sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def feature_dim(self) -> int:
        return self.models.pe.output_dim

    @torch.inference_mode()
    def start(self, prompt_embeds: np.ndarray, num_pages: int) -> None:
        dit = self.models.dit
        cfg = dit.cfg
        self.text_k, self.text_v = dit.text_kv(torch.from_numpy(prompt_embeds).to(self.device))
        lat_h, lat_w = self.lat_hw
        tokens = self.stream.block_frames * (lat_h // cfg.patch[1]) * (lat_w // cfg.patch[2])
        shape = (num_pages, tokens, cfg.heads, cfg.head_dim)
        self.k_pools = [torch.zeros(shape, dtype=self.page_dtype, device=self.device) for _ in range(cfg.layers)]
        self.v_pools = [torch.zeros(shape, dtype=self.page_dtype, device=self.device) for _ in range(cfg.layers)]
        # 8-bit pages: one float32 scale per (token, head); an unwritten page reads as zeros.
        self.k_scales = self.v_scales = None
        if self.quantised:
            self.k_scales = [torch.ones(shape[:3], dtype=torch.float32, device=self.device) for _ in range(cfg.layers)]
            self.v_scales = [torch.ones(shape[:3], dtype=torch.float32, device=self.device) for _ in range(cfg.layers)]
        self.vae_cache = self.models.vae.init_cache(1, lat_h, lat_w, dtype=self.dtype, device=self.device)
        # A graph captures these pools' and text K/V's addresses: a new stream captures anew.
        self._graphed = GraphedStep(self._eager_step, self._capture) if self.cuda_graph else None

    @torch.inference_mode()
    def set_prompt(self, prompt_embeds: np.ndarray) -> None:
        text_k, text_v = self.models.dit.text_kv(torch.from_numpy(prompt_embeds).to(self.device))
        if self._graphed is not None:          # in place: the captured graph reads these tensors
            self.text_k.copy_(text_k)
            self.text_v.copy_(text_v)
        else:
            self.text_k, self.text_v = text_k, text_v

    @torch.inference_mode()
    def recache_window(self, x, t, rope, key_valid, blocks):
        t_freq = torch.from_numpy(timestep_frequencies(float(t), self.models.dit.cfg.freq_dim)).to(self.device)
        k, v = WindowRecache(self.models.dit)(
            self.upload(x), torch.tensor(float(t), device=self.device), t_freq, self.text_k, self.text_v,
            self.upload(rope), self.upload(key_valid))
        per = k.shape[1] // (x.shape[1] // self.stream.block_frames)
        return [(k[:, j * per:(j + 1) * per], v[:, j * per:(j + 1) * per]) for j in range(blocks)]

    def upload(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def dit_step(self, x, t, rope, local_ids, sink_ids):
        # Uploaded like the other inputs (non-blocking): torch.tensor(..., device="cuda") would copy
        # with a host sync, which the sync debug mode reports.
        t_tensor = self.upload(np.asarray(t, dtype=np.float32))
        args = (x, t_tensor, self.upload(rope), self.upload(local_ids), self.upload(sink_ids))
        return self._graphed(*args) if self._graphed is not None else self._eager_step(*args)

    def _eager_step(self, x, t, rope, local_ids, sink_ids):
        return self.step_module(x, t, self.text_k, self.text_v, rope, self.k_pools, self.v_pools, local_ids, sink_ids,
                                k_scales=self.k_scales, v_scales=self.v_scales)

    @torch.inference_mode()
    def write_page(self, page, k_new, v_new) -> None:
        for i in range(len(self.k_pools)):
            if self.quantised:          # quantised once, here: every later read dequantises these bits
                for pools, scales, new in ((self.k_pools, self.k_scales, k_new), (self.v_pools, self.v_scales, v_new)):
                    q, scale = quantise_page(new[i], self.kv_cache_dtype)
                    pools[i][page].copy_(q)
                    scales[i][page].copy_(scale)
                continue
            self.k_pools[i][page].copy_(k_new[i])
            self.v_pools[i][page].copy_(v_new[i])

    @torch.inference_mode()
    def renoise(self, x0, eps, sigma):
        return (1.0 - sigma) * x0 + sigma * eps

    @torch.inference_mode()
    def decode(self, latent, first):
        frames, self.vae_cache = self.models.vae.decode_block(latent[None].to(self.dtype), self.vae_cache, first)
        return frames[0]

    @torch.inference_mode()
    def decode_alone(self, latent):
        lat_h, lat_w = self.lat_hw
        fresh = self.models.vae.init_cache(1, lat_h, lat_w, dtype=self.dtype, device=self.device)
        frames, _ = self.models.vae.decode_block(latent[None].to(self.dtype), fresh, True)
        return frames[0]

    @torch.inference_mode()
    def encode(self, frames):
        return self.models.pe.block_feature(frames[None].to(self.dtype))[0]

    @torch.inference_mode()
    def retrieve(self, bank_feats, bank_start, queries, query_valid, current_start, window_frames, sink_size, k):
        as_t = self.upload
        slots, scores = self._retrieve(
            as_t(bank_feats), as_t(bank_start), as_t(queries), as_t(np.asarray(query_valid, dtype=np.int32)),
            torch.tensor(current_start, device=self.device), torch.tensor(window_frames, device=self.device),
            sink_size, k)
        return slots.cpu().numpy(), scores.float().cpu().numpy()

    def to_numpy(self, handle) -> np.ndarray:
        host = handle.detach().float().cpu()
        # fp32 on the CPU: .float().cpu() is the tensor itself, and .numpy() a view that later steps
        # could change (k_new / v_new); always hand out an array of its own.
        return host.numpy().copy() if host.data_ptr() == handle.data_ptr() else host.numpy()

    @torch.inference_mode()
    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        if self.quantised:              # what attention reads: the dequantised page
            return tuple(torch.stack([dequantise_pages(p[page], s[page], torch.float32) for p, s in zip(pools, scales)])
                         .cpu().numpy() for pools, scales in ((self.k_pools, self.k_scales), (self.v_pools, self.v_scales)))
        return tuple(torch.stack([p[page] for p in pools]).float().cpu().numpy()
                     for pools in (self.k_pools, self.v_pools))

    # -- the page interface of a host-side bank (runtime/host_bank.py) ----------------------------
    def _page_parts(self) -> list[list[torch.Tensor]]:
        return [self.k_pools, self.v_pools] + ([self.k_scales, self.v_scales] if self.quantised else [])

    def host_store(self, entries: int) -> list[torch.Tensor]:
        """Host tensors for `entries` pages in the pools' storage (pinned on CUDA: async copies)."""
        pin = self.device.type == "cuda"
        if pin and not hasattr(self, "_copy_stream"):
            self._copy_stream = torch.cuda.Stream(self.device)
        return [torch.empty((entries, len(pools), *pools[0].shape[1:]), dtype=pools[0].dtype, pin_memory=pin)
                for pools in self._page_parts()]

    @contextlib.contextmanager
    def _copy_scope(self):
        """CUDA: the copies run on a side stream that waits for the work queued so far, and the main
        stream waits for the copies before its next launch (stream waits: no host sync)."""
        if self.device.type != "cuda":
            yield
            return
        main = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(main)
        with torch.cuda.stream(self._copy_stream):
            yield
        main.wait_stream(self._copy_stream)

    @torch.inference_mode()
    def page_to_host(self, page: int, store, entry: int) -> None:
        with self._copy_scope():
            for host, pools in zip(store, self._page_parts()):
                for i, pool in enumerate(pools):
                    host[entry, i].copy_(pool[page], non_blocking=True)

    @torch.inference_mode()
    def page_from_host(self, store, entry: int, page: int) -> None:
        with self._copy_scope():
            for host, pools in zip(store, self._page_parts()):
                for i, pool in enumerate(pools):
                    pool[page].copy_(host[entry, i], non_blocking=True)

    def read_host_page(self, store, entry: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device.type == "cuda":
            self._copy_stream.synchronize()          # a host read: the pending copies first
        if self.quantised:
            return tuple(dequantise_pages(store[j][entry], store[j + 2][entry], torch.float32).numpy() for j in (0, 1))
        return tuple(store[j][entry].float().numpy() for j in (0, 1))

    def graph_state(self) -> dict[str, np.ndarray]:
        if self.dtype == torch.bfloat16 or self.kv_cache_dtype != "auto":
            raise DysinkError("--dump-block: numpy has no bfloat16 or 8-bit float; dump an fp32 or fp16 run with "
                              "--kv-cache-dtype auto")
        state = {"text_k": self.text_k, "text_v": self.text_v}
        state.update({f"k_pool_{i}": p for i, p in enumerate(self.k_pools)})
        state.update({f"v_pool_{i}": p for i, p in enumerate(self.v_pools)})
        return {k: v.detach().cpu().numpy() for k, v in state.items()}

    def close(self) -> None:
        for name in ("_graphed", "k_pools", "v_pools", "k_scales", "v_scales", "vae_cache", "text_k", "text_v", "models", "step_module"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stack(self, handles):
        return torch.stack(handles).float().cpu().numpy()
