"""The interface every backend implements: the four graphs plus buffers.

Handles returned by a backend are its own arrays (torch tensors, numpy
arrays, device buffers); the loop only passes them back in. Only
`to_numpy` and `retrieve` cross to the host, and the loop calls them at
block boundaries, never between a block's denoising steps.
"""

from __future__ import annotations

import abc
import contextlib
from concurrent.futures import Future
from typing import Any, ContextManager

import numpy as np


class Backend(abc.ABC):
    name: str = "?"

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """Width of the memory-bank feature."""

    @abc.abstractmethod
    def start(self, prompt_embeds: np.ndarray, num_pages: int) -> None:
        """Begin a stream: text conditioning, zeroed K/V pools of `num_pages`, fresh VAE cache."""

    @abc.abstractmethod
    def upload(self, array: np.ndarray) -> Any:
        ...

    @abc.abstractmethod
    def dit_step(self, x: Any, t: float, rope: np.ndarray, local_ids: np.ndarray,
                 sink_ids: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """-> (x0, k_new, v_new, gate ratios [layers, S_sink])."""

    @abc.abstractmethod
    def write_page(self, page: int, k_new: Any, v_new: Any) -> None:
        ...

    @abc.abstractmethod
    def renoise(self, x0: Any, eps: Any, sigma: float) -> Any:
        """(1 - sigma) * x0 + sigma * eps."""

    @abc.abstractmethod
    def decode(self, latent: Any, first: bool) -> Any:
        """Stream one block through the VAE (cache kept inside) -> frames [3, T, H, W] in [-1, 1]."""

    @abc.abstractmethod
    def decode_alone(self, latent: Any) -> Any:
        """Decode a block without the streaming cache (the reference's feature path)."""

    def decode_both(self, latent: Any, first: bool) -> tuple[Any, Any]:
        """(decode(latent, first), decode_alone(latent)): the streamed frames and the block-alone
        ones of feature mode block-alone. One after the other here; a backend may overlap the two
        (they are independent given the latent) as long as each result is what the call alone gives."""
        return self.decode(latent, first), self.decode_alone(latent)

    # Whether `decode_later` runs the streamed decode beside the caller's next work (a worker thread
    # with its own cores), so that the loop may pipeline it with the next block (Streamer.blocks).
    pipelines_decodes: bool = False

    def decode_later(self, latent: Any, first: bool) -> Future:
        """`decode(latent, first)` as a Future. Calls resolve in call order (one streaming cache) and
        `latent` stays valid until its Future is done. Here: run now, a Future already done; a backend
        with `pipelines_decodes` runs it on a worker thread instead."""
        done: Future = Future()
        try:
            done.set_result(self.decode(latent, first))
        except Exception as exc:    # noqa: BLE001 (handed to the caller, raised by result())
            done.set_exception(exc)
        return done

    @abc.abstractmethod
    def encode(self, frames: Any) -> Any:
        """Frames [3, T, H, W] -> unit memory-bank feature [F]."""

    @abc.abstractmethod
    def retrieve(self, bank_feats: np.ndarray, bank_start: np.ndarray, queries: np.ndarray,
                 query_valid: np.ndarray, current_start: int, window_frames: int,
                 sink_size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query_valid int32 [Q] (1 valid, 0 not) -> (bank slots int64 [k], scores float32 [k]) on the host."""

    @abc.abstractmethod
    def to_numpy(self, handle: Any) -> np.ndarray:
        ...

    def set_prompt(self, prompt_embeds: np.ndarray) -> None:
        """A prompt switch: recompute the text K/V (the cross-attention cache) from new embeddings."""
        raise NotImplementedError(f"the {self.name} backend cannot switch prompts")

    def recache_window(self, x: np.ndarray, t: float, rope: np.ndarray, key_valid: np.ndarray,
                       blocks: int) -> list[tuple[Any, Any]]:
        """The window recache after a prompt switch (models.dit.WindowRecache): x float32 [C, N, h, w]
        (N = the widest window; valid frames first), rope [2, N * Lf, D/2], key_valid bool [N * Lf].
        -> (k, v) handles [layers, L, H, D] of the first `blocks` blocks, for write_page."""
        raise NotImplementedError(f"the {self.name} backend cannot recache after a prompt switch")

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies (k, v) float32 [layers, tokens, heads, head_dim] of pool page `page`."""
        raise NotImplementedError(f"the {self.name} backend cannot read pages")

    def graph_state(self) -> dict[str, np.ndarray]:
        """The dit_step inputs that live across steps (text_k, text_v, k_pool_i, v_pool_i), on the host,
        in the model dtype: what `dysink-run --dump-block` saves."""
        raise NotImplementedError(f"the {self.name} backend cannot dump its state")

    def denoise_scope(self) -> ContextManager:
        """Entered around a block's denoising steps (the renoise draws' uploads included), where
        nothing may read back to the host. The torch backend checks that on CUDA when its
        `sync_debug` is set (torch.cuda.set_sync_debug_mode inside the scope only)."""
        return contextlib.nullcontext()

    def thread_scope(self) -> ContextManager:
        """Entered around everything a stream computes (its start, each block): the torch backend
        applies its own intra-op thread count there and restores the caller's after, so that one
        stream's `threads` is not left behind for the next stream or for the caller."""
        return contextlib.nullcontext()

    def fence(self) -> None:
        """Wait for the work queued so far (called at each phase boundary of a block). A no-op unless
        a backend is asked for exact per-phase device times (the torch backend's `phase_sync`): on
        a GPU, the phases' host timers otherwise count only the launches."""

    def close(self) -> None:
        """Release device and host memory (pools, caches, sessions); the backend is unusable after."""

    def stack(self, handles: list[Any]) -> Any:
        return np.stack([self.to_numpy(h) for h in handles])
