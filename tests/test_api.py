"""The public Python API (dysink_deploy.api): a stream driven only through it, with injected noise
and features and a per-step observer, makes the decisions of the naive transcription of the
reference loop, on torch and onnxruntime; bad arguments give one clear DysinkError."""

from __future__ import annotations

import numpy as np
import pytest

from dysink_deploy import api
from dysink_deploy.errors import DysinkError

BLOCKS = 10
SETTINGS = {"dedup_threshold": 0.9, "gate_threshold": 0.8, "bank_capacity": 16}


def injected_noise(index, shape, steps):
    rng = np.random.default_rng([777, index])
    return rng.standard_normal(shape, dtype=np.float32), [rng.standard_normal(shape, dtype=np.float32)
                                                          for _ in range(steps - 1)]


def feature_of(index, dim):
    """Unit features sharing a common direction: cosines ~0.8-0.95, so dedup both stores and skips
    and retrieval ranks entries; a function of the block index only, so the naive run gets the same."""
    common = np.random.default_rng(5).standard_normal(dim)
    own = np.random.default_rng([6, index]).standard_normal(dim)
    f = common + (0.45 if index % 3 else 0.2) * own
    return (f / np.linalg.norm(f)).astype(np.float32)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


def _naive(settings, blocks):
    import torch  # noqa: F401

    from dysink_deploy.config import model_preset
    from dysink_deploy.models.factory import build_models
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from tests.naive_dysink import NaiveDySink

    model = model_preset("tiny")
    stream = model.default_stream(**settings)
    dim = model.pe.output_dim
    naive = NaiveDySink(build_models(model, seed=0), stream, default_prompt_embeds(model), seed=0,
                        noise=injected_noise, features=lambda i, latent: feature_of(i, dim))
    for i in range(blocks):
        naive.block(i)
    return naive


@pytest.fixture(scope="module")
def naive():
    pytest.importorskip("torch")
    return _naive(SETTINGS, BLOCKS)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_public_api_stream_matches_the_naive_reference(backend, naive, bundles, tmp_path):
    recorder = Recorder()
    feature_calls = []

    def features(index, frames, latent):
        feature_calls.append((index, frames.shape, frames.dtype, latent.shape))
        return feature_of(index, latent_dim)

    from dysink_deploy.config import model_preset

    latent_dim = model_preset("tiny").pe.output_dim
    kwargs = dict(noise=injected_noise, features=features, observer=recorder, settings=SETTINGS)
    opened = (api.open_stream(bundles("fp32"), **kwargs) if backend == "onnxruntime"
              else api.open_stream(model="tiny", backend="torch", **kwargs))
    with opened as stream:
        assert stream.backend == backend
        blocks = list(stream.blocks(BLOCKS))
        bank = stream.bank()
        pages = {e["page"]: stream.read_page(e["page"]) for e in bank}
    # Decisions, block by block, equal the naive transcription's.
    for block, n in zip(blocks, naive.log):
        st = block.stats
        assert st["window_frames"] == n["window_frames"], block.index
        assert st["bank_size"] == n["bank_size"], block.index
        assert [r["start_frame"] for r in st["retrieved"]] == n["retrieved"], block.index
        assert [g["dropped"] for g in st["gate"]] == n["dropped"], block.index
        assert st["stored"] == n["stored"], block.index
        assert block.frames.dtype == np.uint8 and block.frames.shape[1:] == (64, 96, 3)
    assert any(b.stats["retrieved"] for b in blocks) and any(not b.stats["stored"] for b in blocks[1:])
    # The injected features were used (and the block-alone decode skipped: one call per block).
    assert [c[0] for c in feature_calls] == list(range(BLOCKS))
    assert feature_calls[0][1:] == ((9, 64, 96, 3), np.uint8, (16, 3, 8, 12))
    for block in blocks:
        np.testing.assert_array_equal(block.feature, feature_of(block.index, latent_dim))
    # The observer saw every step and every clean pass; the last step's x0 is the block's latent.
    steps = len(stream.config.denoising_steps)
    assert len(recorder.events) == BLOCKS * (steps + 1)
    for block in blocks:
        mine = [e for e in recorder.events if e.block == block.index]
        assert [e.step for e in mine] == list(range(steps + 1))
        assert [e.page is None for e in mine] == [True] * steps + [False]
        assert mine[-1].t == 0.0 and mine[0].t == 1000.0
        np.testing.assert_array_equal(mine[steps - 1].x0, block.latent)
    # Clean-pass pages of stored blocks are the bank's pages, and read_page returns their K/V.
    clean = {e.block: e.page for e in recorder.events if e.page is not None}
    stored_pages = [clean[b.index] for b in blocks if b.stats["stored"]]
    assert set(stored_pages[-len(bank):]) == set(pages)
    k, v = next(iter(pages.values()))
    dit = model_preset("tiny").dit
    assert k.shape == v.shape == (dit.layers, 3 * 4 * 6, dit.heads, dit.head_dim)
    assert k.dtype == np.float32 and np.abs(k).sum() > 0


def test_read_page_agrees_across_backends(bundles):
    """Same weights (random seed 0), same stream: the K/V of the first stored page agree to fp32 noise."""
    results = []
    for opened in (api.open_stream(model="tiny"), api.open_stream(bundles("fp32"))):
        with opened as stream:
            list(stream.blocks(2))
            page = stream.bank()[0]["page"]
            results.append(stream.read_page(page))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)


def test_to_numpy_is_a_copy_on_every_backend(bundles):
    """A host array handed out must not change when later steps run (the torch CPU fp32 path used to
    hand out a view)."""
    kept = []

    def observer(event):
        kept.append((event.x0, event.x0.copy()))

    for opened in (api.open_stream(model="tiny", observer=observer), api.open_stream(bundles("fp32"),
                                                                                     observer=observer)):
        kept.clear()
        with opened as stream:
            list(stream.blocks(2))
        assert all(np.array_equal(a, b) for a, b in kept)


def test_write_and_close(tmp_path, bundles):
    with api.open_stream(bundles("fp32"), settings={"dedup_threshold": 0.985}) as stream:
        for bad in (0, 10_001, True, 2.5):          # dysink-run --blocks' bounds (stats.json holds every block)
            with pytest.raises(DysinkError, match=r"write\(blocks=\) must be an integer in 1\.\.10000"):
                stream.write(tmp_path / "bad", blocks=bad)
        assert not (tmp_path / "bad").exists()
        result = stream.write(tmp_path / "run", blocks=2)
        with pytest.raises(DysinkError, match="already produced blocks"):
            stream.write(tmp_path / "again", blocks=1)
    assert result.blocks == 2 and {p.name for p in (tmp_path / "run").iterdir()} >= {"video.mp4", "stats.json",
                                                                                      "timeline.png"}
    with pytest.raises(DysinkError, match="this stream is closed"):
        stream.next_block()
    with pytest.raises(DysinkError, match="already holds"):
        api.open_stream(bundles("fp32")).write(tmp_path / "run", blocks=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "jax"}, "backend must be one of"),
    ({"backend": "onnxruntime"}, "pass bundle=DIR"),
    ({"seed": -1}, "seed must be an integer"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"device": "banana"}, "device must be cpu, cuda or cuda:N"),
    ({"checkpoints": {"ckpt": "x.pt"}}, "unknown key(s) ckpt"),
    ({"settings": {"gate_threshold": "0.5"}}, "gate_threshold must be a finite number"),
    ({"settings": [1, 2]}, "settings must be a dict"),
    ({"noise": 3}, "noise must be callable"),
    ({"prompt_embeds": np.zeros((3, 3), np.float32)}, "prompt_embeds must be a float array of shape"),
    ({"cuda_graph": True}, "cuda_graph on the torch backend needs device='cuda'"),
    ({"backend": "onnxruntime", "bundle": "b", "cuda_graph": True}, "cuda_graph applies to the tensorrt and torch"),
    ({"model": "nope"}, "neither a preset"),
])
def test_bad_arguments_one_line(kwargs, message):
    with pytest.raises(DysinkError) as info:
        api.open_stream(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_injections_one_line():
    bad_noise = api.open_stream(noise=lambda i, shape, steps: (np.zeros(shape, np.float32), []))
    with pytest.raises(DysinkError, match="3 eps arrays"):
        bad_noise.next_block()
    not_unit = api.open_stream(features=lambda i, frames, latent: np.ones(16, np.float32))
    with pytest.raises(DysinkError, match="return a unit vector"):
        not_unit.next_block()
    wrong_dim = api.open_stream(features=lambda i, frames, latent: np.ones(5, np.float32) / 5 ** 0.5)
    with pytest.raises(DysinkError, match=r"feature of shape \(16,\)"):
        wrong_dim.next_block()
    with api.open_stream() as stream:
        with pytest.raises(DysinkError, match="outside the pool"):
            stream.read_page(10_000)
        with pytest.raises(DysinkError, match="blocks\\(n\\)"):
            list(stream.blocks(-1))


def test_parts_on_their_own():
    """The VAE decoder and PE-Core without a stream: a block's latent decodes to the frames the
    block-alone decode gives, and encode_frames returns the bank feature of those frames."""
    with api.open_stream() as stream:
        block = stream.next_block()
    frames = api.decode_latents(block.latent)
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - block.frames.astype(int)).max() <= 1      # block 0: same decode
    feature = api.encode_frames(frames)
    assert feature.shape == (16,) and abs(np.linalg.norm(feature) - 1) < 1e-5
    # uint8 frames are the 8-bit rounding of the float decode: the feature is close to the stream's.
    assert float(feature @ block.feature) > 0.99
    with pytest.raises(DysinkError, match=r"must lie in \[-1, 1\]"):
        api.encode_frames(np.full((3, 9, 64, 96), 3.0, np.float32))
    with pytest.raises(DysinkError, match="latents must be a float array"):
        api.decode_latents(np.zeros((3, 3)))


def test_model_config_round_trip_and_strict_checks(tmp_path):
    import json

    from dysink_deploy.config import ModelConfig, model_preset

    tiny = model_preset("tiny")
    assert ModelConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    custom = tiny.to_dict()
    custom["name"] = "tiny-wide"
    custom["dit"]["dim"] = 96
    path = tmp_path / "m.json"
    path.write_text(json.dumps(custom))
    cfg = api.load_model_config(path)
    assert cfg.name == "tiny-wide" and cfg.dit.dim == 96
    for edit, message in ((lambda d: d["dit"].update(dim="96"), "DiTConfig.dim must be int, got '96'"),
                          (lambda d: d["dit"].update(dims=96), "unknown field(s) dims"),
                          (lambda d: d.pop("vae"), "missing field vae"),
                          (lambda d: d["dit"].update(heads=5), "must be divisible"),
                          (lambda d: d["vae"].update(dim_mult=[1, "x"]), "VAEConfig.dim_mult must be")):
        broken = json.loads(json.dumps(custom))
        edit(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(DysinkError) as info:
            api.load_model_config(path)
        assert message in str(info.value) and str(path) in str(info.value), str(info.value)
