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
