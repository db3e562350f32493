"""dysink-run --prompt, dysink-export encode-prompt, text entries in --prompts: one clear line each
for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")

from dysink_deploy.cli.export_cli import main as export_main  # noqa: E402
from dysink_deploy.runtime.cli import main as run_main  # noqa: E402


def test_encode_prompt_then_run_with_it(umt5_tokenizer, tmp_path):
    out = tmp_path / "emb.safetensors"
    res = CliRunner().invoke(export_main, ["encode-prompt", "--prompt", "a cat walks on the beach",
                                           "--tokenizer", str(umt5_tokenizer), "--out", str(out)])
    assert res.exit_code == 0, res.output
    from safetensors.numpy import load_file

    emb = load_file(str(out))["prompt_embeds"]
    assert emb.shape == (512, 4096) and emb[:3].any() and not emb[100:].any()
    res = CliRunner().invoke(run_main, ["--quiet", "--blocks", "1", "--prompt-embeds", str(out),
                                        "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    # --prompt directly gives the same run
    res = CliRunner().invoke(run_main, ["--quiet", "--blocks", "1", "--prompt", "a cat walks on the beach",
                                        "--tokenizer", str(umt5_tokenizer), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / d / "stats.json").read_text())["blocks"][0] for d in "ab")
    assert a["gate"] == b["gate"] and a["max_similarity"] == b["max_similarity"]
    res = CliRunner().invoke(export_main, ["encode-prompt", "--prompt", "x", "--tokenizer", str(umt5_tokenizer),
                                           "--out", str(out)])
    assert res.exit_code == 2 and "exists; pass --overwrite" in res.output


def test_text_entries_in_a_schedule(umt5_tokenizer, tmp_path):
    schedule = tmp_path / "s.json"
    schedule.write_text(json.dumps([{"frame": 0, "prompt": "a cat walks"}, {"frame": 3, "prompt": "a dog runs"}]))
    res = CliRunner().invoke(run_main, ["--quiet", "--blocks", "2", "--prompts", str(schedule), "--tokenizer",
                                        str(umt5_tokenizer), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    blocks = json.loads((tmp_path / "o" / "stats.json").read_text())["blocks"]
    assert blocks[1]["prompt_switch"]["prompt"] == 1


@pytest.mark.parametrize("args, message", [
    (["--prompt", "   ", "--tokenizer", "{tok}"], "the prompt is empty"),
    (["--prompt", "a cat"], "a text prompt needs --tokenizer DIR"),
    (["--prompt", "a cat", "--tokenizer", "{tok}", "--prompt-embeds", "{bad}"], "give one of --prompt"),
    (["--tokenizer", "{tok}"], "give --prompt TEXT"),
    (["--prompt", "a cat", "--tokenizer", "{tmp}"], "has no tokenizer.json"),
    (["--prompt", "a cat", "--tokenizer", "{tok}", "--text-encoder", "{bad}"], "does not match the umT5 text encoder"),
])
def test_bad_prompt_inputs(umt5_tokenizer, tmp_path, args, message):
    bad = tmp_path / "bad.safetensors"
    from safetensors.numpy import save_file

    save_file({"blocks.0.attn.q.weight": np.zeros((2, 2), np.float32)}, str(bad))
    args = [a.format(tok=umt5_tokenizer, tmp=tmp_path, bad=bad) for a in args]
    res = CliRunner().invoke(run_main, ["--quiet", "--blocks", "1", *args, "--out", str(tmp_path / "o")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out, message", [("emb.npy", "must end in .safetensors"), ("emb.safetensors", None)])
def test_encode_prompt_out_checks(umt5_tokenizer, tmp_path, out, message):
    target = tmp_path / out
    if message is None:                     # a symbolic link is never written through
        (tmp_path / "elsewhere.safetensors").write_text("keep")
        target.symlink_to(tmp_path / "elsewhere.safetensors")
        message = "is a symbolic link"
    res = CliRunner().invoke(export_main, ["encode-prompt", "--prompt", "a cat", "--tokenizer", str(umt5_tokenizer),
                                           "--out", str(target), "--overwrite"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    if target.is_symlink():
        assert (tmp_path / "elsewhere.safetensors").read_text() == "keep"
