"""The `torch` backend: the PyTorch reference models, on CPU or CUDA.

Imports torch, so the runtime imports this module only when asked for the
torch backend. On CUDA nothing in `dit_step`, `renoise` or `write_page`
reads back to the host: the loop syncs once per block (`to_numpy`).

The two custom ops run either as their PyTorch references or as the Triton
kernels (`kernels="triton"`, JIT-compiled on CUDA; on CPU only under
TRITON_INTERPRET=1, for tests). `"auto"` picks the kernels on CUDA and the
references on CPU; nothing else in the loop changes.
"""

from __future__ import annotations

import numpy as np
import torch

from ...config import StreamConfig
from ...models.factory import DySinkModels
from ...models.dit import DiTStep, WindowRecache
from ...errors import DysinkError
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


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, models: DySinkModels, stream: StreamConfig, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, kernels: str = "auto"):
        self.device = torch.device(device)
        self.kernels = resolve_kernels(kernels, self.device)
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
        self.k_pools = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.layers)]
        self.v_pools = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(cfg.layers)]
        self.vae_cache = self.models.vae.init_cache(1, lat_h, lat_w, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def set_prompt(self, prompt_embeds: np.ndarray) -> None:
        self.text_k, self.text_v = self.models.dit.text_kv(torch.from_numpy(prompt_embeds).to(self.device))

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
        t_tensor = torch.tensor(float(t), dtype=torch.float32, device=self.device)
        return self.step_module(x, t_tensor, self.text_k, self.text_v, self.upload(rope),
                                self.k_pools, self.v_pools, self.upload(local_ids), self.upload(sink_ids))

    @torch.inference_mode()
    def write_page(self, page, k_new, v_new) -> None:
        for i in range(len(self.k_pools)):
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
        return tuple(torch.stack([p[page] for p in pools]).float().cpu().numpy()
                     for pools in (self.k_pools, self.v_pools))

    def graph_state(self) -> dict[str, np.ndarray]:
        if self.dtype == torch.bfloat16:
            raise DysinkError("--dump-block: numpy has no bfloat16; dump an fp32 or fp16 run")
        state = {"text_k": self.text_k, "text_v": self.text_v}
        state.update({f"k_pool_{i}": p for i, p in enumerate(self.k_pools)})
        state.update({f"v_pool_{i}": p for i, p in enumerate(self.v_pools)})
        return {k: v.detach().cpu().numpy() for k, v in state.items()}

    def close(self) -> None:
        for name in ("k_pools", "v_pools", "vae_cache", "text_k", "text_v", "models", "step_module"):
            if hasattr(self, name):
                delattr(self, name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stack(self, handles):
        return torch.stack(handles).float().cpu().numpy()
