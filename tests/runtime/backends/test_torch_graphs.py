"""The torch backend's CUDA-graph path (GraphedStep) and the loop's sync-free scope, on the CPU.

A CUDA graph cannot be captured here; `eager_capture` keeps its contract (fixed output tensors that
every replay overwrites, inputs copied into fixed buffers), so the buffer handling of the graphed
dit_step (x0 cloned out before the clean pass overwrites it, ratios kept per step, the in-place
text K/V of a prompt switch) is checked bit for bit against the eager backend. The capture itself
and the replay on a GPU: the GPU kit's stage c (decisions) and d (speed), docs/gpu-check.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.models.factory import build_models
from dysink_deploy.runtime.backends.torch_backend import TorchBackend, eager_capture
from dysink_deploy.runtime.prompts import default_prompt_embeds
from dysink_deploy.runtime.spec import RunSpec
from dysink_deploy.runtime.stream import Streamer

MODEL = model_preset("tiny")
# A fixed sink as well as retrieval: every kind of page slot is in use.
STREAM = MODEL.default_stream(dedup_threshold=0.985, gate_threshold=0.5, sink_size=3, local_attn_size=12)
SWITCHING = MODEL.default_stream(dedup_threshold=0.985, gate_threshold=0.5)   # switches need sink_size 0


def _records(blocks: int, stream=STREAM, prompts=None, **backend_kw):
    backend = TorchBackend(build_models(MODEL, seed=0), stream, kernels="reference", **backend_kw)
    streamer = Streamer(backend, MODEL.dit, stream, default_prompt_embeds(MODEL), seed=0, prompts=prompts)
    return list(streamer.blocks(blocks)), backend


def test_graphed_steps_compute_what_eager_steps_do():
    eager, _ = _records(2)
    graphed, backend = _records(2, cuda_graph=True, capture=eager_capture)
    assert backend._graphed is not None and backend._graphed.replay is not None
    for a, b in zip(eager, graphed):
        assert a.to_json() | {"timings_ms": None} == b.to_json() | {"timings_ms": None}
        np.testing.assert_array_equal(a.latent, b.latent)
        np.testing.assert_array_equal(a.frames, b.frames)


def test_graphed_steps_across_a_prompt_switch():
    rng = np.random.default_rng(3)
    other = rng.standard_normal((MODEL.dit.text_len, MODEL.dit.text_dim)).astype(np.float32)
    eager, _ = _records(2, SWITCHING, prompts=[(3, other)])
    graphed, _ = _records(2, SWITCHING, prompts=[(3, other)], cuda_graph=True, capture=eager_capture)
    assert any(r.prompt_switch for r in graphed)
    for a, b in zip(eager, graphed):
        np.testing.assert_array_equal(a.latent, b.latent)


def test_cuda_graph_refused_on_the_cpu_in_one_line():
    with pytest.raises(DysinkError, match="needs a CUDA device"):
        TorchBackend(build_models(MODEL, seed=0), STREAM, cuda_graph=True)
    with pytest.raises(DysinkError) as info:
        RunSpec(model="tiny", cuda_graph=True)
    assert "RunSpec.cuda_graph on RunSpec.backend torch needs RunSpec.device cuda" in str(info.value)
    assert "\n" not in str(info.value)
    RunSpec(model="tiny", device="cuda", cuda_graph=True)       # accepted: torch on CUDA


def test_no_host_read_inside_the_denoising_scope():
    """The loop enters Backend.denoise_scope around every denoising step, renoise and the clean pass,
    and never reads back to the host (to_numpy, retrieve, stack) inside it: what torch's sync debug
    mode checks on a GPU (stage c)."""
    from tests.runtime.fake_backend import FakeBackend

    class Watched(FakeBackend):
        inside = 0
        entered = 0
        bad: list = []

        def denoise_scope(self):
            backend = self

            class Scope:
                def __enter__(self):
                    backend.inside += 1
                    backend.entered += 1

                def __exit__(self, *exc):
                    backend.inside -= 1

            return Scope()

        def _check(self, what):
            if self.inside:
                self.bad.append(what)

        def to_numpy(self, handle):
            self._check("to_numpy")
            return super().to_numpy(handle)

        def retrieve(self, *args):
            self._check("retrieve")
            return super().retrieve(*args)

        def stack(self, handles):
            self._check("stack")
            return super().stack(handles)

    cfg = MODEL.default_stream(dedup_threshold=0.9999)
    backend = Watched(cfg)
    streamer = Streamer(backend, MODEL.dit, cfg, np.zeros((MODEL.dit.text_len, MODEL.dit.text_dim), np.float32))
    list(streamer.blocks(4))
    steps = len(cfg.denoising_steps)
    assert backend.entered == 4 * (steps + (steps - 1) + 1)        # steps, renoises, clean pass
    assert backend.bad == [] and backend.calls["retrieve"] > 0
