"""The tensorrt backend's cache of CUDA graphs: one per engine launch with the same bound addresses.

`cuda_graph=True` (`dysink-run --cuda-graph`) replays engine launches as CUDA graphs: the first
launch of an engine with a given set of bound addresses runs normally (TensorRT's own warm-up);
the second runs normally too and is then captured, right after that uncaptured enqueue with the
same addresses (`cudaStreamBeginCapture` around `execute_async_v3`; the capture records, it does
not execute). TensorRT defers the work a new binding needs (a plugin's `onShapeChange` included)
to the next enqueue after `set_tensor_address`: that work is done by the uncaptured enqueue, so it
never lands in a graph. Every later launch with the same addresses is one `cudaGraphLaunch`. A
block's four denoising steps and three renoises bind a small, repeating set of addresses
(timestep buffers, the latent ring), so after the first blocks every step is a graph replay.
Host-to-device uploads (rope, page ids) stay outside the graphs and land in fixed buffers the
graphs read. If a capture fails (a driver or a TensorRT build that cannot capture), the backend
says so once and runs without graphs; the launch that tried has already run.

Host logic only: cuda-python's runtime module comes in as `rt` (tests/runtime/backends/test_cuda_graphs.py
drives it with a recording stand-in).
"""

from __future__ import annotations

import sys

from ...errors import DysinkError


class GraphCache:
    """CUDA graphs of engine launches keyed by (engine, bound addresses); see the module docstring.

    `rt` is cuda-python's runtime module, `stream` the stream every launch goes to. `limit` caps
    the number of instantiated graphs (launches beyond it run without a graph)."""

    def __init__(self, rt, stream, limit: int = 256):
        self.rt, self.stream, self.limit = rt, stream, limit
        self.seen: dict[tuple, int] = {}
        self.execs: dict[tuple, object] = {}
        self.graphs: list[object] = []
        self.replays = 0
        self.disabled: str | None = None          # why capture was given up, once it was

    def _err(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        return int(err), (rest[0] if rest else None)

    def launch(self, key: tuple, enqueue) -> None:
        """Run `enqueue()` (which enqueues on self.stream and returns False on failure) or replay its graph."""
        exe = self.execs.get(key)
        if exe is not None:
            err, _ = self._err(self.rt.cudaGraphLaunch(exe, self.stream))
            if err:
                raise DysinkError(f"cudaGraphLaunch failed: {self.rt.cudaGetErrorString(err)[1]}")
            self.replays += 1
            return
        count = self.seen.get(key, 0)
        self.seen[key] = count + 1
        if not enqueue():                       # the work of this launch, uncaptured, always
            raise DysinkError(f"TensorRT failed to enqueue {key[0]} (see its messages above)")
        if self.disabled or count == 0 or len(self.execs) >= self.limit:
            return
        # Right after an uncaptured enqueue with these addresses: capture the same enqueue for the
        # launches to come (recorded, not run again).
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        err, _ = self._err(self.rt.cudaStreamBeginCapture(self.stream, mode))
        if err:
            return self._give_up(f"cudaStreamBeginCapture: {self.rt.cudaGetErrorString(err)[1]}")
        try:
            enqueued = enqueue()
        finally:
            err, graph = self._err(self.rt.cudaStreamEndCapture(self.stream))
        if not enqueued or err or graph is None:
            why = ("TensorRT could not enqueue under capture" if not enqueued
                   else f"cudaStreamEndCapture: {self.rt.cudaGetErrorString(err)[1]}")
            if graph is not None:
                self.rt.cudaGraphDestroy(graph)
            return self._give_up(why)
        err, exe = self._err(self.rt.cudaGraphInstantiate(graph, 0))
        if err:
            self.rt.cudaGraphDestroy(graph)
            return self._give_up(f"cudaGraphInstantiate: {self.rt.cudaGetErrorString(err)[1]}")
        self.graphs.append(graph)
        self.execs[key] = exe

    def _give_up(self, why: str) -> None:
        self.disabled = why
        print(f"warning: CUDA graphs disabled ({why}); running engines without them", file=sys.stderr)

    def summary(self) -> dict:
        return {"graphs": len(self.execs), "replays": self.replays, "disabled": self.disabled}

    def close(self) -> None:
        for exe in self.execs.values():
            self.rt.cudaGraphExecDestroy(exe)
        for graph in self.graphs:
            self.rt.cudaGraphDestroy(graph)
        self.execs.clear()
        self.graphs.clear()
