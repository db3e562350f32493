"""The tensorrt backend's CUDA runtime wrapper, through cuda-python's runtime API (no torch).

`_Cuda` owns one stream and every device allocation (freed in `close`); `DeviceTensor` is the
handle the loop passes around (address, shape, dtype name). Uploads go through pinned staging
buffers, one per destination: a cudaMemcpyAsync from pageable memory makes the host wait for the
copy, which would serialise the host with the GPU inside a block. A staging buffer is reused only
after the event recorded behind its last copy has completed. cuda-python is imported when a `_Cuda`
is made, not when this module is: it imports on machines without cuda-python (the CPU tests).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from ...errors import DysinkError

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DysinkError("the tensorrt backend needs cuda-python: pip install cuda-python") from None
    return cudart


@dataclass
class DeviceTensor:
    """A device buffer the loop passes around: address, shape, dtype name."""
    ptr: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        itemsize = 2 if self.dtype == "bfloat16" else np.dtype(_NP[self.dtype]).itemsize
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


class _Cuda:
    def __init__(self):
        self.rt = _cudart()
        self.allocations: list[int] = []
        self.staging: dict[int, tuple[int, int, object]] = {}    # device address -> (pinned host address, bytes, event)
        self.stream = self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def _ok(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise DysinkError(f"{what} failed: {self.rt.cudaGetErrorString(err)[1]}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def alloc(self, nbytes: int, zero: bool = True) -> int:
        ptr = int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes} bytes)"))
        self.allocations.append(ptr)
        if zero:
            self._ok(self.rt.cudaMemsetAsync(ptr, 0, max(int(nbytes), 1), self.stream), "cudaMemsetAsync")
        return ptr

    def upload(self, ptr: int, array: np.ndarray) -> None:
        """Host -> device, asynchronously, through the pinned staging buffer of destination `ptr`."""
        array = np.ascontiguousarray(array)
        nbytes = int(array.nbytes)
        stage = self.staging.get(ptr)
        if stage is not None and stage[1] < nbytes:
            self._ok(self.rt.cudaEventSynchronize(stage[2]), "cudaEventSynchronize")
            self.rt.cudaFreeHost(stage[0])
            self.rt.cudaEventDestroy(stage[2])
            stage = None
        if stage is None:
            host = int(self._ok(self.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes} bytes)"))
            event = self._ok(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")
            stage = self.staging[ptr] = (host, max(nbytes, 1), event)
        else:                                   # its previous copy must have left the buffer
            self._ok(self.rt.cudaEventSynchronize(stage[2]), "cudaEventSynchronize")
        ctypes.memmove(stage[0], array.ctypes.data, nbytes)
        self._ok(self.rt.cudaMemcpyAsync(ptr, stage[0], nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                         self.stream), "upload")
        self._ok(self.rt.cudaEventRecord(stage[2], self.stream), "cudaEventRecord")

    def download(self, array: np.ndarray, ptr: int) -> np.ndarray:
        self._ok(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "download")
        self.sync()
        return array

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                         self.stream), "device copy")

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for host, _, event in self.staging.values():
            self.rt.cudaFreeHost(host)
            self.rt.cudaEventDestroy(event)
        self.staging.clear()
        for ptr in self.allocations:
            self.rt.cudaFree(ptr)
        self.allocations.clear()
