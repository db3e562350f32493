"""--model-config FILE.json on dysink-export onnx, dysink-run and verify-checkpoint; the bundle records
the model, and its rebuild command works for a model that is not a preset."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from dysink_deploy.bundle import Bundle
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.config import model_preset
from dysink_deploy.runtime import cli as run_cli


@pytest.fixture()
def custom(tmp_path):
    d = model_preset("tiny").to_dict()
    d["name"] = "tiny-one-layer"
    d["dit"]["layers"] = 1
    path = tmp_path / "model.json"
    path.write_text(json.dumps(d))
    return path


def test_export_run_and_rebuild_a_non_preset_model(custom, tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "bundle"
    res = CliRunner().invoke(export_main, ["onnx", "--model-config", str(custom), "--out", str(out),
                                           "--graph", "retrieve", "--graph", "dit_step"])
    assert res.exit_code == 0, res.output
    bundle = Bundle.load(out, require=("retrieve", "dit_step"))
    assert bundle.model.name == "tiny-one-layer" and bundle.model.dit.layers == 1
    command = bundle.rebuild_command()
    assert "--model-config" in command and "--overwrite" in command and "--model " not in command, command
    argv = shlex.split(command)
    assert argv[:2] == ["dysink-export", "onnx"]
    # the printed command works (with the bundle's own graphs: a subset would not replace it, issue 22)
    res = CliRunner().invoke(export_main, argv[1:] + ["--graph", "retrieve", "--graph", "dit_step"])
    assert res.exit_code == 0, res.output
    assert Bundle.load(out, require=("retrieve", "dit_step")).model == bundle.model


def test_run_and_verify_take_a_model_config(custom, tmp_path):
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--model-config", str(custom), "--blocks", "1",
                                            "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["config"]["model"] == "tiny-one-layer"


@pytest.mark.parametrize("cli, args", [
    (run_cli.main, ["--quiet", "--blocks", "1", "--model", "tiny"]),
    (export_main, ["onnx", "--model", "tiny"]),
    (export_main, ["verify-checkpoint", "--model", "tiny", "--pe", "x.pt"]),
])
def test_model_and_model_config_exclude_each_other(cli, args, custom, tmp_path):
    res = CliRunner().invoke(cli, [*args, "--model-config", str(custom), "--out", str(tmp_path / "o")]
                             if cli is not export_main or args[0] == "onnx" else [*args, "--model-config", str(custom)])
    assert res.exit_code == 2 and "give --model or --model-config, not both" in res.output


@pytest.mark.parametrize("content, message", [
    ('{"name": "x"}', "missing field height"),
    ("[1]", "must hold a JSON object"),
    ('{"name": "x", "height": 64, "width": 96, "dit": {}, "vae": {}, "pe": {"widht": 1}}', "unknown field(s) widht"),
])
def test_bad_model_config_files(content, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--model-config", str(path), "--blocks", "1",
                                            "--out", str(tmp_path / "o")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0] and str(path) in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_verify_checkpoint_with_a_model_config(custom, tmp_path):
    torch = pytest.importorskip("torch")
    from dysink_deploy.api import load_model_config
    from dysink_deploy.models.factory import build_models

    models = build_models(load_model_config(custom), seed=0)
    torch.save({"generator": models.dit.state_dict()}, tmp_path / "one.pt")
    res = CliRunner().invoke(export_main, ["verify-checkpoint", "--model-config", str(custom),
                                           "--checkpoint", str(tmp_path / "one.pt")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(export_main, ["verify-checkpoint", "--model", "tiny", "--checkpoint",
                                           str(tmp_path / "one.pt")])
    assert res.exit_code == 1            # the preset has two layers: blocks.1.* are missing


def test_memory_encoder_at_any_frame_count(tmp_path):
    """--encoder-frames 5: a memory_encoder_t5 graph beside the stream's t9, recorded in the
    manifest, in the rebuild command, and equal to PE-Core on 5 frames."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from dysink_deploy import api

    out = tmp_path / "b"
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--out", str(out), "--encoder-frames", "5",
                                           "--graph", "memory_encoder_t5", "--graph", "memory_encoder_t9"])
    assert res.exit_code == 0, res.output
    bundle = Bundle.load(out, require=("memory_encoder_t5", "memory_encoder_t9"))
    assert bundle.encoder_frames == (5,) and bundle.specs["memory_encoder_t5"].inputs[0].shape == (1, 3, 5, 64, 96)
    assert "--encoder-frames 5" in bundle.rebuild_command()
    frames = np.random.default_rng(0).uniform(-1, 1, (3, 5, 64, 96)).astype(np.float32)
    sess = ort.InferenceSession(str(bundle.graph_path("memory_encoder_t5")), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"frames": frames[None]})
    np.testing.assert_allclose(got[0], api.encode_frames(frames), atol=1e-5)
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--out", str(tmp_path / "c"),
                                           "--encoder-frames", "0"])
    assert res.exit_code == 2 and "--encoder-frames: encoder frame counts must be integers in 1..1024" in res.output
