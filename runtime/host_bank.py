"""A host-side memory bank (`bank_placement host`): the bank's K/V pages in (pinned) host memory.

The stream's page table is unchanged (runtime/pages.py: logical pages 0..P-1, P = the bank, the
window history, the block being made and the fixed sink), so every decision is the same as with
the bank on the device. What changes is where a logical page's K/V are kept:

- every written page goes to a host store of P entries (write-through: each block's page is copied
  device -> host once, right after it is written);
- the device pool holds only S = window history + 1 + fixed sink + top_k slots
  (`graphs.device_pool_pages`): the window's pages, the block being made, the fixed sink and
  top_k staging slots for the retrieved entries;
- before a step reads a page that is not in a slot, it is copied host -> device into a slot that
  this step does not read (least recently used first). A block's retrieved pages are therefore
  copied in once per block, before its first denoising step; the window's pages stay resident.

The copies are the backends' page interface (`Backend.host_store`, `page_to_host`,
`page_from_host`, `read_host_page`): on CUDA (torch) they run on a side stream ordered by stream
waits, never a host sync inside a block; on the CPU (torch CPU, onnxruntime CPU) they are plain
copies, which keeps the whole path under test here. On Jetson, CPU and GPU share one memory: a
host bank saves nothing there (the planner says so).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DysinkError
from ..graphs import device_pool_pages
from .backends.base import Backend


class HostBankBackend(Backend):
    """`inner` with its pool cut to the device slots and the bank's pages kept on the host."""

    def __init__(self, inner: Backend, stream):
        self.inner, self.stream = inner, stream
        self.name = inner.name
        self.slots = device_pool_pages(stream, "host")
        self.copies_in = 0      # host -> device page copies so far
        self.copies_out = 0     # device -> host page copies so far

    # -- the page mapping ----------------------------------------------------------------------
    def start(self, prompt_embeds: np.ndarray, num_pages: int) -> None:
        self.pages = num_pages
        self.inner.start(prompt_embeds, self.slots)
        self.store = self.inner.host_store(num_pages)       # shaped like the pools the start made
        self.slot_of: dict[int, int] = {}                 # logical page -> device slot
        self.page_in: list[int | None] = [None] * self.slots
        self.last_use = [-1] * self.slots
        self.clock = 0
        self._keep: set[int] = set()

    def _slot_for(self, page: int, keep: set[int]) -> int:
        """A slot for logical `page`, not one holding a page in `keep` (empty slots first, then LRU)."""
        free = [s for s in range(self.slots) if self.page_in[s] is None]
        if not free:
            free = sorted((s for s in range(self.slots) if self.page_in[s] not in keep), key=self.last_use.__getitem__)
        if not free:
            raise DysinkError(f"host bank: no free device slot among {self.slots} for page {page}: this is a runtime "
                              "bug (the slots are sized from the stream config); please report it with your config")
        slot = free[0]
        old = self.page_in[slot]
        if old is not None:
            del self.slot_of[old]
        self.page_in[slot], self.slot_of[page] = page, slot
        return slot

    def _map(self, ids: np.ndarray, keep: set[int]) -> np.ndarray:
        out = np.full(ids.shape, -1, dtype=np.int64)
        for j, page in enumerate(ids.tolist()):
            if not 0 <= page < self.pages:
                continue                                  # an empty slot stays empty
            slot = self.slot_of.get(page)
            if slot is None:
                slot = self._slot_for(page, keep)
                self.inner.page_from_host(self.store, page, slot)
                self.copies_in += 1
            self.last_use[slot] = self.clock
            out[j] = slot
        return out

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        self.clock += 1
        keep = {p for p in np.concatenate([local_ids, sink_ids]).tolist() if 0 <= p < self.pages}
        self._keep = keep
        return self.inner.dit_step(x, t, rope, self._map(local_ids, keep), self._map(sink_ids, keep))

    def write_page(self, page: int, k_new, v_new) -> None:
        self.clock += 1
        slot = self.slot_of.get(page)
        if slot is None:
            slot = self._slot_for(page, self._keep)     # not a page the block just read (the window's)
        self.last_use[slot] = self.clock
        self.inner.write_page(slot, k_new, v_new)
        self.inner.page_to_host(slot, self.store, page)
        self.copies_out += 1

    def read_page(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.read_host_page(self.store, page)

    def graph_state(self) -> dict[str, np.ndarray]:
        raise DysinkError("--dump-block: a run with the bank on the host binds device slots, not the pages the "
                          "embedding example replays; dump a run with --bank-placement device")

    def close(self) -> None:
        self.store = None
        self.inner.close()

    # -- everything else is the inner backend's ----------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.inner.feature_dim

    def upload(self, array):
        return self.inner.upload(array)

    def renoise(self, x0, eps, sigma):
        return self.inner.renoise(x0, eps, sigma)

    def decode(self, latent, first):
        return self.inner.decode(latent, first)

    def decode_alone(self, latent):
        return self.inner.decode_alone(latent)

    def decode_both(self, latent, first):
        return self.inner.decode_both(latent, first)

    @property
    def pipelines_decodes(self) -> bool:
        return self.inner.pipelines_decodes

    def decode_later(self, latent, first):
        return self.inner.decode_later(latent, first)

    def encode(self, frames):
        return self.inner.encode(frames)

    def retrieve(self, *args):
        return self.inner.retrieve(*args)

    def to_numpy(self, handle) -> np.ndarray:
        return self.inner.to_numpy(handle)

    def set_prompt(self, prompt_embeds):
        return self.inner.set_prompt(prompt_embeds)

    def recache_window(self, *args):
        return self.inner.recache_window(*args)

    def denoise_scope(self):
        return self.inner.denoise_scope()

    def thread_scope(self):
        return self.inner.thread_scope()

    def fence(self) -> None:
        self.inner.fence()

    def stack(self, handles: list[Any]):
        return self.inner.stack(handles)

    def __getattr__(self, name):          # backend-specific attributes (kernels, sync_debug, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
