"""The DySink streaming runtime (numpy + one backend library; no torch needed).

Installs as `dysink_deploy.runtime`. The chunk loop, memory bank, page table
and retrieval queue live here once, above every backend.
"""

from .bank import MemoryBank
from .pages import PageAllocator
from .schedule import BlockContext, ContextScheduler
from .stream import BlockRecord, Streamer

__all__ = ["BlockContext", "BlockRecord", "ContextScheduler", "MemoryBank", "PageAllocator", "Streamer"]
