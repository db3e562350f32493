"""Checkpoint loading: the released layouts load exactly, LoRA merges right, bad files fail in one line.

Every file here is synthetic (tests/ckpt_fixtures.py), written from the tiny
preset's modules in the layouts of the real DySink / Wan / PE files, in a
pytest tmp dir. The full-size preset is only ever built on the meta device.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from dysink_deploy import checkpoints as ck
from dysink_deploy.errors import DysinkError
from dysink_deploy.models.factory import CheckpointPaths, DySinkModels, build_models
from tests.ckpt_fixtures import (
    FAKE_ENCODER_KEYS, FULL, PE_LAYOUTS, TINY, full_vae_obj, linear_targets, pe_obj, peft_lora, randomized,
    save, stage1_obj, state_of, tiny_models, write_tiny_set)


def assert_state_equal(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = module.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def meta_models(cfg) -> DySinkModels:
    with torch.device("meta"):
        return DySinkModels(cfg)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("tiny_set"), seed=0)


# ---------------------------------------------------------------------------
# The released layouts load and give back what was saved
# ---------------------------------------------------------------------------
def test_stage1_loads_generator_by_default(tiny_set):
    # A different weights seed, so equality proves the file was loaded.
    models = build_models(TINY, CheckpointPaths(dit=str(tiny_set["dit"])), seed=7)
    assert_state_equal(models.dit, tiny_set["states"]["generator"])


def test_stage1_use_ema_loads_generator_ema_through_fsdp_keys(tiny_set):
    # The EMA entry of the fixture is saved with `_fsdp_wrapped_module.` inside every block key.
    raw = torch.load(tiny_set["dit"], weights_only=True)
    assert any("_fsdp_wrapped_module." in k for k in raw["generator_ema"])
    models = build_models(TINY, CheckpointPaths(dit=str(tiny_set["dit"]), use_ema=True), seed=7)
    assert_state_equal(models.dit, tiny_set["states"]["generator_ema"])


@pytest.mark.parametrize("prefix", ["_fsdp_wrapped_module.model.", "model._fsdp_wrapped_module.", "module.model."])
def test_stage1_wrapper_prefixes(tmp_path, prefix):
    gen = state_of(tiny_models(1).dit)
    path = save({"generator": {prefix + k: v for k, v in gen.items()}}, tmp_path / "stage1.pt")
    assert_state_equal(build_models(TINY, CheckpointPaths(dit=str(path)), seed=7).dit, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stage1_as_safetensors(tmp_path, dtype):
    gen = {k: v.to(dtype) for k, v in state_of(tiny_models(2).dit).items()}
    path = save({"model." + k: v for k, v in gen.items()}, tmp_path / "stage1.safetensors")
    assert_state_equal(build_models(TINY, CheckpointPaths(dit=str(path)), seed=7).dit, gen)


def test_safetensors_reader_matches_the_library(tmp_path):
    # Our memory-mapped reader against safetensors' own loader, with every common
    # dtype and tensors placed at odd offsets (the format does not pad between them).
    from safetensors.torch import load_file
    g = torch.Generator().manual_seed(3)
    tensors = {
        "a_u8": torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8),
        "b_f32": torch.randn(4, 5, generator=g),
        "c_bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "d_f16": torch.randn(2, 3, generator=g).to(torch.float16),
        "e_i64": torch.arange(5),
        "f_bool": torch.tensor([True, False, True]),
        "g_f64": torch.randn(3, generator=g, dtype=torch.float64),
        "h_empty": torch.zeros(0, 4),
        "i_scalar": torch.tensor(2.5),
    }
    path = save(tensors, tmp_path / "mixed.safetensors")
    ours, ref = ck.load_tensor_file(path, "test"), load_file(str(path))
    assert set(ours) == set(ref) == set(tensors)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k


def test_lora_merge_matches_hand_computation(tiny_set):
    paths = CheckpointPaths(dit=str(tiny_set["dit"]), lora=str(tiny_set["lora"]))
    merged = build_models(TINY, paths, seed=7).dit.state_dict()
    base, lora = tiny_set["states"]["generator"], tiny_set["states"]["lora"]
    scale = TINY.dit.lora_alpha / TINY.dit.lora_rank
    assert scale == 2.0  # tiny preset: rank 4, alpha 8

    # One layer by hand: W + alpha / rank * B @ A, in float32.
    a = lora["base_model.model.blocks.1.cross_attn.v.lora_A.weight"]
    b = lora["base_model.model.blocks.1.cross_attn.v.lora_B.weight"]
    w = base["blocks.1.cross_attn.v.weight"]
    expected = w + scale * (b @ a)
    assert not torch.allclose(expected, w)
    torch.testing.assert_close(merged["blocks.1.cross_attn.v.weight"], expected, rtol=0, atol=1e-6)

    # Every Linear of every block got its update; nothing else changed.
    targets = linear_targets(tiny_models().dit)
    assert len(targets) == 10 * TINY.dit.layers
    assert {t.split(".", 2)[2] for t in targets} == {
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
        "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"}
    for key, value in base.items():
        target = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and target in targets:
            a = lora[f"base_model.model.{target}.lora_A.weight"]
            b = lora[f"base_model.model.{target}.lora_B.weight"]
            torch.testing.assert_close(merged[key], value + scale * (b @ a), rtol=0, atol=1e-6)
        else:
            assert torch.equal(merged[key], value), key


def test_lora_accepts_raw_peft_module_keys(tmp_path, tiny_set):
    # model.state_dict() of a PEFT model keeps the adapter name: `.lora_A.default.weight`.
    lora = {k.replace(".weight", ".default.weight"): v for k, v in tiny_set["states"]["lora"].items()}
    path = save({"generator_lora": lora}, tmp_path / "lora_default.pt")
    ours = build_models(TINY, CheckpointPaths(dit=str(tiny_set["dit"]), lora=str(path)), seed=7).dit
    ref = build_models(TINY, CheckpointPaths(dit=str(tiny_set["dit"]), lora=str(tiny_set["lora"])), seed=7).dit
    assert_state_equal(ours, ref.state_dict())


def test_vae_full_file_keeps_only_the_decoder(tiny_set):
    raw = torch.load(tiny_set["vae"], weights_only=True)
    assert set(FAKE_ENCODER_KEYS) <= set(raw)
    assert set(FAKE_ENCODER_KEYS).isdisjoint(ck.vae_state_dict(str(tiny_set["vae"])))
    models = build_models(TINY, CheckpointPaths(vae=str(tiny_set["vae"])), seed=7)
    assert_state_equal(models.vae, tiny_set["states"]["vae"])


@pytest.mark.parametrize("layout", PE_LAYOUTS)
def test_pe_layouts(tmp_path, layout):
    pe = state_of(tiny_models(4).pe)
    path = save(pe_obj(pe, layout), tmp_path / f"pe_{layout}.pt")
    assert_state_equal(build_models(TINY, CheckpointPaths(pe=str(path)), seed=7).pe, pe)


def test_legacy_torch_format_loads_without_mmap(tmp_path):
    # Pre-zip `torch.save` files cannot be memory-mapped; they are still accepted.
    vae = state_of(tiny_models(6).vae)
    path = tmp_path / "legacy_vae.pth"
    torch.save(full_vae_obj(vae), path, _use_new_zipfile_serialization=False)
    assert_state_equal(build_models(TINY, CheckpointPaths(vae=str(path)), seed=7).vae, vae)


def test_vae_and_pe_as_safetensors(tmp_path):
    src = tiny_models(5)
    vae, pe = state_of(src.vae), state_of(src.pe)
    paths = CheckpointPaths(vae=str(save(full_vae_obj(vae), tmp_path / "vae.safetensors")),
                            pe=str(save(pe_obj(pe, "visual"), tmp_path / "pe.safetensors")))
    models = build_models(TINY, paths, seed=7)
    assert_state_equal(models.vae, vae)
    assert_state_equal(models.pe, pe)


# ---------------------------------------------------------------------------
# Bad inputs: a DysinkError of one line that names the problem, nothing written
# ---------------------------------------------------------------------------
class _Foo:
    """Not a tensor: weights_only=True must refuse to unpickle it."""


def _bad_case(name: str, tmp_path, tiny_set):
    """Build the bad input of case `name`; returns (a callable that should raise, expected words)."""
    gen = tiny_set["states"]["generator"]
    dit = str(tiny_set["dit"])

    def build(**paths):
        return lambda: build_models(TINY, CheckpointPaths(**paths), seed=0)

    if name == "missing file":
        return build(dit=str(tmp_path / "nope.pt")), ["does not exist"]
    if name == "truncated file":
        data = tiny_set["dit"].read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
        return build(dit=str(tmp_path / "cut.pt")), ["cannot read", "cut.pt"]
    if name == "garbage file":
        (tmp_path / "junk.pth").write_bytes(random.Random(0).randbytes(1000))
        return build(vae=str(tmp_path / "junk.pth")), ["cannot read", "junk.pth"]
    if name == "truncated safetensors":
        data = save({"model." + k: v for k, v in gen.items()}, tmp_path / "s.safetensors").read_bytes()
        (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
        return build(dit=str(tmp_path / "cut.safetensors")), ["cannot read", "truncated"]
    if name == "pickled object":
        torch.save({"state_dict": {"conv1.weight": torch.ones(1)}, "extra": _Foo()}, tmp_path / "evil.pt")
        return build(pe=str(tmp_path / "evil.pt")), ["weights_only", "_Foo"]
    if name == "not a dict":
        torch.save(torch.ones(3), tmp_path / "tensor.pt")
        return build(pe=str(tmp_path / "tensor.pt")), ["holds a Tensor"]
    if name == "tiny into full preset":
        # build_models checks keys before loading; on a meta-built 1.3B model
        # that check is the same without allocating 5.7 GB.
        full = meta_models(FULL)
        return (lambda: ck.load_into(full.dit, ck.dit_state_dict(dit), "DiT", dit)), \
            ["does not match the DiT", "mis-shaped", "verify-checkpoint"]
    if name == "missing keys":
        partial = {k: v for k, v in gen.items() if not k.startswith("blocks.1.")}
        return build(dit=str(save(stage1_obj(partial), tmp_path / "partial.pt"))), \
            ["missing", "blocks.1."]
    if name == "lora wrong rank":
        lora = peft_lora(tiny_models().dit, rank=TINY.dit.lora_rank + 2)
        return build(dit=dit, lora=str(save({"generator_lora": lora}, tmp_path / "r6.pt"))), \
            ["rank 6", "says 4"]
    if name == "lora missing layer":
        lora = dict(tiny_set["states"]["lora"])
        lora["base_model.model.blocks.5.self_attn.q.lora_A.weight"] = torch.zeros(4, 64)
        lora["base_model.model.blocks.5.self_attn.q.lora_B.weight"] = torch.zeros(64, 4)
        return build(dit=dit, lora=str(save({"generator_lora": lora}, tmp_path / "extra.pt"))), \
            ["blocks.5.self_attn.q.weight", "no"]
    if name == "lora A without B":
        lora = {k: v for k, v in tiny_set["states"]["lora"].items() if k != "base_model.model.blocks.0.ffn.2.lora_B.weight"}
        return build(dit=dit, lora=str(save({"generator_lora": lora}, tmp_path / "half.pt"))), \
            ["blocks.0.ffn.2", "no lora_B"]
    if name == "use-ema without ema":
        path = save(stage1_obj(gen), tmp_path / "gen_only.pt")
        return build(dit=str(path), use_ema=True), ["generator_ema", "--use-ema"]
    if name == "use-ema on a plain state dict":
        path = save(dict(gen), tmp_path / "plain.pt")
        return build(dit=str(path), use_ema=True), ["generator_ema", "--use-ema"]
    if name == "lora passed as base":
        return build(dit=str(tiny_set["lora"])), ["LoRA", "--lora"]
    raise AssertionError(name)


BAD_CASES = ["missing file", "truncated file", "garbage file", "truncated safetensors", "pickled object",
             "not a dict", "tiny into full preset", "missing keys", "lora wrong rank", "lora missing layer",
             "lora A without B", "use-ema without ema", "use-ema on a plain state dict", "lora passed as base"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_raise_one_line(case, tmp_path, tiny_set, monkeypatch):
    fn, words = _bad_case(case, tmp_path, tiny_set)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DysinkError) as info:
        fn()
    message = str(info.value)
    assert isinstance(info.value, ck.CheckpointError)
    assert "\n" not in message and len(message) < 1200, message
    for word in words:
        assert word in message, (word, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_randomized_helper_gives_new_values(tiny_set):
    # Guard for the EMA test above: generator and generator_ema must differ.
    gen, ema = tiny_set["states"]["generator"], tiny_set["states"]["generator_ema"]
    assert not torch.equal(gen["head.head.weight"], ema["head.head.weight"])
    assert set(randomized(gen, 0)) == set(gen)


# ---------------------------------------------------------------------------
# The full-size preset's expected keys (meta device: no memory, about a second)
# ---------------------------------------------------------------------------
def _count(module: nn.Module) -> tuple[int, int]:
    sd = module.state_dict()
    return len(sd), sum(v.numel() for v in sd.values())


def test_full_preset_expected_keys_on_meta():
    models = meta_models(FULL)
    assert all(p.is_meta for p in models.parameters())
    assert _count(models.dit) == (825, 1_418_996_800)
    assert _count(models.vae) == (108, 73_295_603)
    assert _count(models.pe) == (163, 23_782_656)
    shapes = {k: list(v.shape) for k, v in models.dit.state_dict().items()}
    assert shapes["blocks.29.ffn.0.weight"] == [8960, 1536]
    assert shapes["head.head.weight"] == [64, 1536]
    assert shapes["time_projection.1.weight"] == [9216, 1536]
    assert shapes["blocks.0.modulation"] == [1, 6, 1536]
    assert shapes["patch_embedding.weight"] == [1536, 16, 1, 2, 2]
    assert shapes["text_embedding.0.weight"] == [1536, 4096]
    assert "blocks.30.ffn.0.weight" not in shapes
    # The stage2 LoRA targets: 10 Linear layers in each of the 30 blocks.
    assert len(ck.lora_targets(models.dit)) == 300
    assert "blocks.29.ffn.2" in ck.lora_targets(models.dit)
