"""`dysink-run --dump-block N DIR`: the inputs and outputs of block N's denoising steps, as .npy.

For each step s: DIR/step{s}/<input>.npy for every input of the dit_step graph (names from the
graph contract: x_t, t, t_freq, text_k, text_v, rope, k_pool_i, v_pool_i, local_ids, sink_ids) and
DIR/step{s}/x0.npy, ratios.npy; DIR/meta.json says what they are. The C++ embedding example
(plugins/examples/embed) replays them through an engine and compares x0.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from ..atomic import check_output_place, write_atomic
from ..errors import DysinkError
from ..rope import timestep_frequencies


def check_dump_dir(path: str) -> None:
    """--dump-block DIR before the run: a new or empty real directory (never a symbolic link, which
    --out refuses too, nor a file) in a place that can take it."""
    if os.path.islink(path):
        raise DysinkError(f"--dump-block directory {path!r} is a symbolic link; give the real directory (nothing is "
                          "written through a link)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise DysinkError(f"--dump-block {path!r} exists and is not a directory; give an empty or new directory")
    if os.path.isdir(path):
        if os.listdir(path):
            raise DysinkError(f"--dump-block directory {path!r} is not empty; choose an empty or new one")
        if not os.access(path, os.W_OK | os.X_OK):
            raise DysinkError(f"--dump-block directory {path!r} is not writable; choose a writable directory")
    else:
        check_output_place(path, "--dump-block")


class BlockDumper:
    """Wraps a backend; records block `block`'s dit_step calls (its denoising steps, not the clean pass)."""

    def __init__(self, backend: Any, block: int, out: str, steps: int, freq_dim: int, precision: str):
        if block < 0:
            raise DysinkError(f"--dump-block must be >= 0, got {block}")
        self._inner, self.block, self.out, self.steps = backend, block, out, steps
        self.freq_dim, self.precision = freq_dim, precision
        self._calls = 0
        self.written = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def dit_step(self, x, t, rope, local_ids, sink_ids):
        block, step = divmod(self._calls, self.steps + 1)
        self._calls += 1
        result = self._inner.dit_step(x, t, rope, local_ids, sink_ids)
        if block == self.block and step < self.steps:
            self._save(step, x, t, rope, local_ids, sink_ids, result)
        return result

    def _save(self, step, x, t, rope, local_ids, sink_ids, result) -> None:
        created = not os.path.exists(self.out)       # by this step: removed again if it fails
        d = os.path.join(self.out, f"step{step}")
        try:
            self._write(step, d, x, t, rope, local_ids, sink_ids, result)
        except OSError as exc:               # disk full, read-only: this step's partial files go
            shutil.rmtree(d, ignore_errors=True)
            if created:
                shutil.rmtree(self.out, ignore_errors=True)
            kept = f"steps 0..{self.written - 1} kept (meta.json lists them)" if self.written else "nothing kept"
            raise DysinkError(f"--dump-block: {exc.strerror or exc} writing {exc.filename or d}; {kept}") from None

    def _write(self, step, d, x, t, rope, local_ids, sink_ids, result) -> None:
        os.makedirs(d, exist_ok=True)
        arrays = {"x_t": self._inner.to_numpy(x).astype(np.float32), "t": np.asarray(t, dtype=np.float32),
                  "t_freq": timestep_frequencies(float(t), self.freq_dim), "rope": rope.astype(np.float32),
                  "local_ids": local_ids.astype(np.int64), "sink_ids": sink_ids.astype(np.int64),
                  **self._inner.graph_state(),
                  "x0": self._inner.to_numpy(result[0]).astype(np.float32),
                  "ratios": self._inner.to_numpy(result[3]).astype(np.float32)}
        for name, arr in arrays.items():
            np.save(os.path.join(d, f"{name}.npy"), np.array(arr, order="C"))   # ascontiguousarray makes 0-d 1-d
        meta = {"block": self.block, "steps": step + 1, "precision": self.precision,
                "what": "inputs of the dit_step graph per denoising step, and its x0 / ratios outputs"}
        write_atomic(os.path.join(self.out, "meta.json"), json.dumps(meta, indent=1).encode())
        self.written = step + 1
