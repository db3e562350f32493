"""Host-side page table of the device K/V pool.

A page holds one block's clean-pass K/V in every layer. A page can be
referenced by the local-window history, by the memory bank and by the fixed
sink at once; it returns to the free list when the last reference goes.
Retrieval never copies K/V: it hands page ids to the attention op.
"""

from __future__ import annotations

from ..errors import DysinkError


class PageAllocator:
    def __init__(self, num_pages: int):
        if num_pages < 1:
            raise DysinkError(f"the K/V pool needs at least one page, got {num_pages}")
        self.num_pages = num_pages
        self._refs = [0] * num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out 0, 1, 2, ...

    def alloc(self) -> int:
        if not self._free:
            raise DysinkError(
                f"K/V pool exhausted ({self.num_pages} pages): this is a runtime bug, the pool is "
                "sized from the stream config; please report it with your config")
        page = self._free.pop()
        self._refs[page] = 1
        return page

    def retain(self, page: int) -> None:
        if self._refs[page] <= 0:
            raise RuntimeError(f"retain of free page {page}")
        self._refs[page] += 1

    def release(self, page: int) -> None:
        if self._refs[page] <= 0:
            raise RuntimeError(f"release of free page {page}")
        self._refs[page] -= 1
        if self._refs[page] == 0:
            self._free.append(page)

    def refcount(self, page: int) -> int:
        return self._refs[page]

    @property
    def in_use(self) -> int:
        return self.num_pages - len(self._free)


# -- 8-bit pages without torch (the onnxruntime / tensorrt backends' write_page) ------------------
# The numpy twin of ops/kv_pages.py's quantise_page / dequantise_pages, bit for bit (tested against
# it): float32 arithmetic, int8 rounding half to even, e4m3 by ml_dtypes' round-to-nearest cast.
_QMAX = {"int8": 127.0, "fp8": 448.0}


def np_page_dtype(kv_cache_dtype: str, model_dtype):
    """The numpy dtype of a pool: the model's (auto), or bf16 / int8 / e4m3 (ml_dtypes)."""
    import numpy as np

    if kv_cache_dtype == "auto":
        return np.dtype(model_dtype)
    if kv_cache_dtype == "int8":
        return np.dtype(np.int8)
    import ml_dtypes      # lazy: ml_dtypes (an onnx dependency); only for bf16 / fp8 pages

    return np.dtype(ml_dtypes.bfloat16 if kv_cache_dtype == "bf16" else ml_dtypes.float8_e4m3fn)


def np_quantise_page(x, kv_cache_dtype: str):
    """x [..., D] float -> (q [..., D] int8 | e4m3, scale float32 [...]); see ops/kv_pages.quantise_page."""
    import numpy as np

    qmax = np.float32(_QMAX[kv_cache_dtype])
    xf = np.asarray(x).astype(np.float32)
    amax = np.abs(xf).max(-1)
    scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
    y = np.clip(xf / scale[..., None], -qmax, qmax)
    q = np.rint(y).astype(np.int8) if kv_cache_dtype == "int8" else y.astype(np_page_dtype("fp8", None))
    return q, scale


def np_dequantise_pages(q, scale, dtype):
    """q * scale in float32, then `dtype`; see ops/kv_pages.dequantise_pages."""
    import numpy as np

    return (np.asarray(q).astype(np.float32) * np.asarray(scale, dtype=np.float32)[..., None]).astype(dtype)
