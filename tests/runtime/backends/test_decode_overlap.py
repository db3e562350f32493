"""The onnxruntime backend's overlapped decodes (feature mode block-alone on the CPU): the streamed and
the block-alone decode of a block run at once, each VAE session on half the cores. The stream must be
the one the decodes make one after the other, bit for bit: frames, features, latents, decisions."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from dysink_deploy.runtime.prompts import default_prompt_embeds  # noqa: E402
from dysink_deploy.runtime.stream import Streamer  # noqa: E402

BLOCKS = 5


def _stream(bundle, overlap: bool, threads: int):
    backend = OnnxRuntimeBackend(bundle, threads=threads)
    assert backend.overlap_decodes            # block-alone bundle, >= 2 threads on the CPU
    backend.overlap_decodes = overlap         # off: Backend.decode_both, one decode after the other
    stream = bundle.stream
    try:
        return list(Streamer(backend, bundle.model.dit, stream, default_prompt_embeds(bundle.model), seed=0,
                             pipeline=False).blocks(BLOCKS))     # the pipeline: test_decode_pipeline.py
    finally:
        backend.close()


def test_overlapped_decodes_change_nothing(bundles):
    bundle = Bundle.load(bundles("fp32"))
    assert bundle.stream.feature_mode == "block-alone"
    one_by_one, overlapped = _stream(bundle, False, 2), _stream(bundle, True, 2)
    for a, b in zip(one_by_one, overlapped):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.feature, b.feature)
        np.testing.assert_array_equal(a.latent, b.latent)
        assert a.to_json()["stored"] == b.to_json()["stored"]


def test_overlap_only_where_it_helps(bundles):
    bundle = Bundle.load(bundles("fp32"))
    assert not OnnxRuntimeBackend(bundle, threads=1).overlap_decodes          # one core: nothing to overlap
    both = OnnxRuntimeBackend(bundle, threads=2)
    assert both.overlap_decodes
    try:
        frames, alone = both.decode_both(both.upload(np.zeros(both.specs["vae_decode_first"].input("z").shape[1:],
                                                                 np.float32)), True)
        assert frames is alone                    # block 0: the streamed decode is the block-alone one
        assert both._alone_pool is None           # ...so no second decode was started
    finally:
        both.close()
