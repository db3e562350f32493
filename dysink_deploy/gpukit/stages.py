"""The kit's stages, in the order they run. Each is a function `run(kit, out, log, result)` in its
own module, imported only when that stage runs (`python3 -m dysink_deploy.gpukit STAGE`), so a
stage's libraries never load in the runner."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    key: str            # the command-line name
    letter: str         # the name (a-d): also accepted on the command line
    title: str
    reserve_s: float    # seconds kept for this stage while the ones before it run
    module: str         # dysink_deploy.gpukit.<module>:run

    def function(self):
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), "run")


STAGES = (
    Stage("kernels", "a", "Triton kernels (JIT) vs the PyTorch references, then vs SDPA", 20, "kernels_stage"),
    Stage("harness", "b", "AOT cubins through libdysink_plugins.so's enqueue (TensorRT-free harness)", 10,
          "harness_stage"),
    Stage("stream", "c", "torch backend on CUDA: 12-block tiny stream = the CPU's decisions, sync-free steps", 45,
          "stream_stage"),
    Stage("fullsize", "d", "Wan2.1-1.3B random weights, 480x832 bf16: frames/s, phases, peak memory", 240,
          "fullsize_stage"),
)
BY_NAME = {**{s.key: s for s in STAGES}, **{s.letter: s for s in STAGES}}


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(name)
    return BY_NAME[name]
