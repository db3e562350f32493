"""dysink-run end to end on the tiny preset, and every bad input giving one clear line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.report import decisions
from dysink_deploy.runtime.video import read_frame_count

BLOCK_KEYS = {"index", "start_frame", "window_frames", "bank_size", "retrieved", "gate", "stored",
              "max_similarity", "timings_ms"}


def invoke(*args):
    return CliRunner().invoke(run_cli.main, ["--quiet", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    out = tmp_path_factory.mktemp("run12")
    res = invoke("--model", "tiny", "--backend", "torch", "--blocks", 12, "--seed", 0, "--out", out,
                 "--dedup-threshold", 0.985, "--overwrite")
    assert res.exit_code == 0, res.output
    return out, res


def test_outputs_and_stats_schema(twelve):
    out, res = twelve
    assert res.output.strip().splitlines()[-1].startswith("DONE | 12 blocks, 141 frames")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["model"] == "tiny" and stats["config"]["stream"]["top_k"] == 2
    assert len(stats["blocks"]) == 12
    for i, b in enumerate(stats["blocks"]):
        assert BLOCK_KEYS <= set(b), BLOCK_KEYS - set(b)
        assert b["index"] == i and b["start_frame"] == 3 * i
        for r, g in zip(b["retrieved"], b["gate"]):
            assert set(r) == {"start_frame", "score"} and g["start_frame"] == r["start_frame"]
            assert np.array(g["ratios"]).shape == (4, 2) == np.array(g["dropped"]).shape  # [steps][layers]
        assert isinstance(b["stored"], bool)
    assert any(b["retrieved"] for b in stats["blocks"])
    assert read_frame_count(str(out / "video.mp4")) == 141
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_stats(twelve, tmp_path):
    out, _ = twelve
    res = invoke("--blocks", 12, "--seed", 0, "--out", tmp_path, "--dedup-threshold", 0.985)
    assert res.exit_code == 0, res.output
    a = json.loads((out / "stats.json").read_text())
    b = json.loads((tmp_path / "stats.json").read_text())
    assert decisions(a) == decisions(b)
    for x, y in zip(a["blocks"], b["blocks"]):
        assert x["max_similarity"] == y["max_similarity"] and x["gate"] == y["gate"]
    other = tmp_path / "seed1"
    assert invoke("--blocks", 3, "--seed", 1, "--out", other).exit_code == 0
    c = json.loads((other / "stats.json").read_text())
    assert c["blocks"][1]["max_similarity"] != a["blocks"][1]["max_similarity"]


def test_seconds_sets_block_count(tmp_path):
    res = invoke("--seconds", 1.5, "--out", tmp_path)   # 24 frames + 3 -> ceil(27 / 12) = 3 blocks
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "stats.json").read_text())["blocks"]) == 3


def test_interrupted_run_keeps_what_it_wrote(tmp_path, monkeypatch):
    from dysink_deploy.runtime.stream import Streamer

    real_step = Streamer.step

    def step(self):
        if self.next_index == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Streamer, "step", step)
    res = invoke("--blocks", 10, "--out", tmp_path)
    assert res.exit_code == 130
    assert "INTERRUPTED | 3 blocks, 33 frames" in res.output
    assert read_frame_count(str(tmp_path / "video.mp4")) == 33, "frames written so far stay playable"
    assert len(json.loads((tmp_path / "stats.json").read_text())["blocks"]) == 3
    assert (tmp_path / "timeline.png").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], "no temporary files left"


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _write_embeds(path, shape=(512, 4096), dtype=np.float32, name="prompt_embeds"):
    from safetensors.numpy import save_file

    save_file({name: np.zeros(shape, dtype=dtype)}, str(path))
    return path


@pytest.mark.parametrize("args, message", [
    (["--blocks", 0], "--blocks must be an integer in 1..10000, got 0"),
    (["--blocks", 2, "--seconds", 1], "not both"),
    (["--seconds", -1], "--seconds must be a finite number in (0, 7499.8125]"),
    (["--model", "wan2.2-14b"], "Invalid value for '--model': 'wan2.2-14b' is not one of"),
    (["--top-k", -1], "--top-k must be an integer >= 0"),
    (["--local-attn-size", 10], "--local-attn-size (10) must be a multiple of --block-frames"),
    (["--gate-threshold", 1.5], "--gate-threshold must lie in [0, 1]"),
    (["--bank-capacity", 1], "--bank-capacity (1) must be >= --top-k (2)"),
    (["--sink-size", 6], "--sink-size (6) must be 0 or one block"),
    (["--height", 70], "--height (70) must be a multiple of 16"),
    (["--model", "wan2.1-t2v-1.3b"], "needs real text conditioning"),
    (["--backend", "onnxruntime"], "needs --bundle"),
    (["--device", "cuda"], "no CUDA device"),
])
def test_bad_options_give_one_line(tmp_path, args, message):
    if "--device" in args:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    res = invoke("--out", tmp_path / "o", *args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert not (tmp_path / "o" / "video.mp4").exists()


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"top_k": 2, "windw": 9}')
    res = invoke("--out", tmp_path / "o", "--config", bad)
    assert res.exit_code == 2 and "unknown stream setting(s): windw" in res.output
    bad.write_text("{not json")
    res = invoke("--out", tmp_path / "o", "--config", bad)
    assert res.exit_code == 2 and "is not valid JSON" in res.output
    res = invoke("--out", tmp_path / "o", "--config", tmp_path / "missing.json")
    assert res.exit_code == 2 and "does not exist: --config" in res.output


@pytest.mark.parametrize("make, message", [
    (lambda p: _write_embeds(p / "e.safetensors", shape=(512, 1024)), "has shape [512, 1024], expected [512, 4096]"),
    (lambda p: _write_embeds(p / "e.safetensors", dtype=np.int32), "has dtype int32, expected a float dtype"),
    (lambda p: p / "missing.safetensors", "does not exist"),
    (lambda p: _write_bytes(p / "e.pt", b"x"), "must be a .safetensors file"),
    (lambda p: _write_bytes(p / "e.safetensors", b"garbage"), "cannot read --prompt-embeds"),
])
def test_bad_prompt_embeds(tmp_path, make, message):
    res = invoke("--out", tmp_path / "o", "--prompt-embeds", make(tmp_path))
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_good_prompt_embeds_with_batch_dim(tmp_path):
    emb = _write_embeds(tmp_path / "e.safetensors", shape=(1, 512, 4096), dtype=np.float16)
    res = invoke("--out", tmp_path / "o", "--prompt-embeds", emb, "--blocks", 1)
    assert res.exit_code == 0, res.output


def test_bad_and_mismatched_checkpoints(tmp_path):
    import torch
    from safetensors.torch import save_file

    emb = _write_embeds(tmp_path / "e.safetensors")
    garbage = tmp_path / "stage1.pt"
    garbage.write_bytes(b"not a checkpoint")
    res = invoke("--out", tmp_path / "o", "--prompt-embeds", emb, "--checkpoint", garbage)
    assert res.exit_code == 2 and "cannot read DiT checkpoint" in res.output, res.output
    wrong = tmp_path / "dit.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2)}, str(wrong))
    res = invoke("--out", tmp_path / "o", "--prompt-embeds", emb, "--checkpoint", wrong)
    assert res.exit_code == 2 and "does not match the DiT" in res.output and "mis-shaped" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = invoke("--out", tmp_path / "o", "--prompt-embeds", emb, "--lora", wrong)
    assert res.exit_code == 2 and "--lora needs the base DiT checkpoint" in res.output


def test_unusable_output_dirs(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    res = invoke("--out", afile)
    assert res.exit_code == 2 and "exists and is not a directory" in res.output
    res = invoke("--out", afile / "sub")
    assert res.exit_code == 2 and "cannot create --out" in res.output
    done = tmp_path / "done"
    done.mkdir()
    (done / "video.mp4").write_bytes(b"old")
    res = invoke("--out", done, "--blocks", 1)
    assert res.exit_code == 2 and "already holds video.mp4" in res.output
    assert (done / "video.mp4").read_bytes() == b"old", "nothing already produced is lost"
