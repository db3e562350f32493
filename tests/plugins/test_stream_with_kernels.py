"""A 6-block tiny stream on the torch backend: Triton kernels (interpreted) vs the references, on
model-precision pages and on int8 pages (--kv-cache-dtype int8: both read the same quantised pools).

Same decisions (windows, bank sizes, retrieved entries, every gate ratio and
drop, dedup skips), and latents close: the kernels differ from the reference
only in float32 summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime.backends.torch_backend import TorchBackend, resolve_kernels
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.stream import Streamer

BLOCKS = 6        # retrieval starts at block 4 here (two sinks at 5), with drops


def _records(kernels: str, kv_cache_dtype: str = "auto"):
    model = model_preset("tiny")
    # dedup 0.985 so the random tiny model's bank grows; gate 0.5 so that drops happen.
    stream = model.default_stream(dedup_threshold=0.985, gate_threshold=0.5)
    backend = TorchBackend(build_models(model, seed=0), stream, kernels=kernels, kv_cache_dtype=kv_cache_dtype)
    assert backend.kernels == kernels
    streamer = Streamer(backend, model.dit, stream, default_prompt_embeds(model), seed=0)
    return list(streamer.blocks(BLOCKS))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_same_decisions_as_the_references(kv_cache_dtype):
    ref, ker = _records("reference", kv_cache_dtype), _records("triton", kv_cache_dtype)
    retrieved = dropped = 0
    for a, b in zip(ref, ker):
        where = f"block {a.index}"
        assert (a.window_frames, a.bank_size) == (b.window_frames, b.bank_size), where
        assert [x["start_frame"] for x in a.retrieved] == [x["start_frame"] for x in b.retrieved], where
        np.testing.assert_allclose([x["score"] for x in a.retrieved], [x["score"] for x in b.retrieved],
                                   atol=1e-6, err_msg=where)
        assert [g["dropped"] for g in a.gate] == [g["dropped"] for g in b.gate], where
        assert [g["ratios"] for g in a.gate] == [g["ratios"] for g in b.gate], where
        assert a.to_json().get("stored") == b.to_json().get("stored"), where
        # uint8 frames: a float32 difference of ulps may flip a rounding by one level.
        np.testing.assert_allclose(a.frames.astype(int), b.frames.astype(int), atol=1, err_msg=where)
        retrieved += len(a.retrieved)
        dropped += sum(sum(map(bool, np.ravel(g["dropped"]))) for g in a.gate)
    assert retrieved > 0 and dropped > 0, "the stream must exercise retrieval and gate drops"


def test_kernel_choice():
    import torch

    assert resolve_kernels("auto", torch.device("cpu")) == "reference"
    assert resolve_kernels("triton", torch.device("cpu")) == "triton"     # interpreter is on in this suite
    with pytest.raises(DysinkError, match="--kernels must be one of"):
        resolve_kernels("cuda", torch.device("cpu"))


def _dysink_run(*args, interpret: bool):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "dysink_deploy.runtime.cli", "--quiet", *args],
                          capture_output=True, text=True, env=env)


def test_dysink_run_kernels_flag(tmp_path):
    # Interpreted: a real run, and stats.json says which implementation ran.
    out = tmp_path / "ok"
    res = _dysink_run("--model", "tiny", "--kernels", "triton", "--blocks", "1", "--out", str(out), interpret=True)
    assert res.returncode == 0, res.stderr
    import json
    assert json.loads((out / "stats.json").read_text())["config"]["kernels"] == "triton"
    # Compiled kernels on the CPU: refused in one line, before --out is created.
    res = _dysink_run("--model", "tiny", "--kernels", "triton", "--blocks", "1", "--out", str(tmp_path / "no"),
                      interpret=False)
    assert res.returncode == 2 and "only under Triton's interpreter" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "no").exists()
    # A torch-backend flag with the onnxruntime backend.
    res = _dysink_run("--backend", "onnxruntime", "--bundle", str(tmp_path), "--kernels", "triton", "--blocks", "1",
                      "--out", str(tmp_path / "no"), interpret=True)
    assert res.returncode == 2 and "--kernels" in res.stderr, res.stderr
