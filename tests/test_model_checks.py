"""Model configurations and checkpoints that passed and meant nothing (issue 22): a model config
missing a field was silently the 1.3B's value (a DiT without `layers` had 30), `rope_theta` was read
by nothing, booleans passed as numbers; checkpoint tensors of the wrong dtype (int8 weights) were cast
silently and passed `verify-checkpoint`, and all-NaN weights streamed and exported."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dysink_deploy.config import DiTConfig, ModelConfig, StreamConfig, model_preset
from dysink_deploy.errors import DysinkError

TINY = model_preset("tiny")


# -- model configurations -----------------------------------------------------------------------------
@pytest.mark.parametrize("part, field", [("dit", "layers"), ("dit", "rope_theta"), ("dit", "lora_alpha"),
                                         ("vae", "num_res_blocks"), ("vae", "latent_std"), ("pe", "pool_type"),
                                         ("pe", "output_dim")])
def test_a_missing_field_is_named_not_defaulted(tmp_path, part, field):
    data = TINY.to_dict()
    del data[part][field]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    from dysink_deploy.runtime.builder import load_model_config

    with pytest.raises(DysinkError) as info:
        load_model_config(str(path))
    text = str(info.value)
    assert f"is missing field(s) {field}" in text and str(path) in text and "\n" not in text, text
    assert ModelConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY        # every field: reads


def test_rope_theta_is_read():
    from dysink_deploy.rope import rope_phases

    other = dataclasses.replace(TINY.dit, rope_theta=500.0)
    assert not np.allclose(rope_phases(TINY.dit, 3, 3, 4, 6), rope_phases(other, 3, 3, 4, 6))
    same = dataclasses.replace(TINY.dit, rope_theta=10000.0)
    assert np.array_equal(rope_phases(TINY.dit, 3, 3, 4, 6), rope_phases(same, 3, 3, 4, 6))


@pytest.mark.parametrize("make, needle", [
    (lambda: DiTConfig(rope_theta=True), "DiTConfig.rope_theta must be a finite number > 0, got True"),
    (lambda: DiTConfig(rope_theta=0.0), "DiTConfig.rope_theta must be a finite number > 0, got 0.0"),
    (lambda: DiTConfig(eps=True), "DiTConfig.eps must be a finite number > 0, got True"),
    (lambda: DiTConfig(lora_alpha=float("nan")), "DiTConfig.lora_alpha must be a finite number > 0, got nan"),
    (lambda: DiTConfig(patch=(True, 2, 2)), "DiTConfig.patch must be three positive integers"),
    (lambda: StreamConfig(denoising_steps=(True,)), "StreamConfig.denoising_steps must be integers in (0, 1000]"),
])
def test_booleans_are_not_numbers(make, needle):
    with pytest.raises(DysinkError) as info:
        make()
    assert needle in str(info.value)


# -- checkpoints: dtypes and finite values ------------------------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_state():
    from tests.ckpt_fixtures import state_of, tiny_models

    return state_of(tiny_models(0).dit)


def _stage1(tmp_path, state, name="stage1_base.pt"):
    from tests.ckpt_fixtures import save, stage1_obj

    return save(stage1_obj(state), tmp_path / name)


def _int8(state):
    key = "blocks.0.self_attn.q.weight"
    bad = dict(state)
    bad[key] = (state[key] * 100).to(torch.int8)
    return bad, key


def test_int8_weights_are_refused_when_loaded(tmp_path, tiny_state):
    from dysink_deploy.checkpoints import CheckpointError
    from dysink_deploy.models.factory import CheckpointPaths, build_models

    bad, key = _int8(tiny_state)
    path = _stage1(tmp_path, bad)
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, CheckpointPaths(dit=str(path)))
    text = str(info.value)
    assert f"{key}: file int8, model float32 (weights must be float16, bfloat16 or float32)" in text, text
    assert "\n" not in text and "wrong-dtype" in text


def test_verify_checkpoint_fails_on_int8_weights(tmp_path, tiny_state):
    from dysink_deploy.cli.export_cli import main as export_main

    bad, key = _int8(tiny_state)
    res = CliRunner().invoke(export_main, ["verify-checkpoint", "--model", "tiny", "--checkpoint",
                                           str(_stage1(tmp_path, bad))])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"wrong dtype DiT: {key}: file int8, model float32" in res.output, res.output
    # the same file in bf16 fits (weights may come in any float dtype)
    good = {k: v.to(torch.bfloat16) for k, v in tiny_state.items()}
    res = CliRunner().invoke(export_main, ["verify-checkpoint", "--model", "tiny", "--checkpoint",
                                           str(_stage1(tmp_path, good, "bf16.pt"))])
    assert res.exit_code == 0, res.output


def test_lora_weights_of_the_wrong_dtype_are_a_problem(tiny_state):
    from dysink_deploy.checkpoints import check_lora

    a = torch.zeros(4, 64, dtype=torch.int8)
    b = torch.zeros(64, 4)
    report = check_lora({"blocks.0.self_attn.q": {"A": a, "B": b}}, [], {"blocks.0.self_attn.q.weight": (64, 64)}, 4)
    assert not report.ok and any("lora_A is int8" in line for line in report.lines()), report.lines()


def test_non_finite_weights_are_refused_before_a_run(tmp_path, tiny_state):
    from dysink_deploy.checkpoints import CheckpointError
    from dysink_deploy.models.factory import CheckpointPaths, build_models

    bad = {k: torch.full_like(v, float("nan")) for k, v in tiny_state.items()}
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, CheckpointPaths(dit=str(_stage1(tmp_path, bad))))
    assert "holds non-finite weights" in str(info.value) and "values are NaN or Inf" in str(info.value)


def test_an_export_from_all_nan_weights_is_refused_and_writes_nothing(tmp_path, tiny_state):
    from dysink_deploy.cli.export_cli import main as export_main

    bad = dict(tiny_state)
    bad["head.head.weight"] = torch.full_like(bad["head.head.weight"], float("inf"))
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--checkpoint", str(_stage1(tmp_path, bad)),
                                           "--out", str(out)])
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert lines[-1].startswith("error: ") and "head.head.weight: " in lines[-1] and "NaN or Inf" in lines[-1]
    assert not out.exists()
