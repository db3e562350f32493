"""`dysink-export verify-checkpoint` through click's CliRunner, on synthetic files.

Exit codes: 0 everything matches (PASSED), 1 key problems (FAILED, all of
them listed), 2 user errors (one `error:` line, nothing else printed).
"""

from __future__ import annotations

import resource
import time

import pytest
import torch
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main
from dysink_deploy.models.factory import DySinkModels
from tests.ckpt_fixtures import FULL, TINY, full_vae_obj, save, stage1_obj, write_tiny_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("verify_set"), seed=1)


def run(*args: str):
    return CliRunner().invoke(main, ["verify-checkpoint", *map(str, args)])


def all_files(s):
    return ["--checkpoint", s["dit"], "--lora", s["lora"], "--vae", s["vae"], "--pe", s["pe"]]


def test_all_tiny_files_pass(tiny_set):
    result = run("--model", "tiny", *all_files(tiny_set))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1].startswith("PASSED")
    summary = [line for line in lines if line.startswith("  ok")]
    assert len(summary) == 4
    assert any("LoRA: 20 A/B pairs, 0 problems" in line for line in summary)
    assert "problems:" not in result.output and "warnings:" not in result.output


def test_use_ema_passes(tiny_set):
    result = run("--model", "tiny", "--checkpoint", tiny_set["dit"], "--use-ema")
    assert result.exit_code == 0, result.output
    assert "DiT (generator_ema): 0 missing" in result.output


def test_lora_alone_is_checked_against_the_preset(tiny_set):
    result = run("--model", "tiny", "--lora", tiny_set["lora"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("PASSED")


def test_mismatches_are_all_listed(tmp_path, tiny_set):
    gen = dict(tiny_set["states"]["generator"])
    del gen["blocks.0.norm3.bias"]                        # missing
    gen["head.head.weight"] = torch.zeros(3, 3)          # mis-shaped
    gen["blocks.0.extra.weight"] = torch.zeros(1)        # unexpected
    dit = save(stage1_obj(gen), tmp_path / "bad_stage1.pt")

    lora = dict(tiny_set["states"]["lora"])
    del lora["base_model.model.blocks.1.ffn.0.lora_B.weight"]                     # A without B
    lora["base_model.model.blocks.9.cross_attn.k.lora_A.weight"] = torch.zeros(4, 64)  # no such layer
    lora["base_model.model.blocks.9.cross_attn.k.lora_B.weight"] = torch.zeros(64, 4)
    lora["base_model.model.blocks.0.self_attn.o.lora_A.weight"] = torch.zeros(5, 64)   # A/B rank disagree
    lora_path = save({"generator_lora": lora}, tmp_path / "bad_lora.pt")

    vae = {k: v for k, v in tiny_set["states"]["vae"].items() if not k.startswith("conv2.")}
    vae_path = save(full_vae_obj(vae), tmp_path / "bad_vae.pth")

    result = run("--model", "tiny", "--checkpoint", dit, "--lora", lora_path, "--vae", vae_path,
                 "--pe", tiny_set["pe"])
    assert result.exit_code == 1, result.output
    out = result.output
    assert out.splitlines()[-1].startswith("FAILED")
    for expected in [
        "missing     DiT: blocks.0.norm3.bias",
        "unexpected  DiT: blocks.0.extra.weight",
        "mis-shaped  DiT: head.head.weight: file [3, 3] vs model [64, 64]",
        "unpaired    LoRA: blocks.1.ffn.0 has lora_A but no lora_B",
        "no target   LoRA: blocks.9.cross_attn.k",
        "rank        LoRA: blocks.0.self_attn.o",
        "missing     VAE decoder: conv2.weight",
        "missing     VAE decoder: conv2.bias",
        "ok   PE-Core encoder: 0 missing, 0 unexpected, 0 mis-shaped keys",
        "BAD  DiT: 1 missing, 1 unexpected, 1 mis-shaped keys",
    ]:
        assert expected in out, (expected, out)
    # The layer that lost its B is reported once, as a problem, not again as "not merged".
    assert "not merged" not in out


def test_missing_file_is_one_line_exit_2(tmp_path, tiny_set):
    result = run("--model", "tiny", "--checkpoint", tiny_set["dit"], "--vae", tmp_path / "Wan2.1_VAE.pth")
    assert result.exit_code == 2
    assert result.stdout == ""  # nothing half-printed before the error
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: VAE checkpoint") and "Wan2.1_VAE.pth" in lines[0]


def test_corrupt_file_is_one_line_exit_2(tmp_path, tiny_set):
    data = tiny_set["pe"].read_bytes()
    (tmp_path / "pe.pt").write_bytes(data[:1000])
    result = run("--model", "tiny", "--pe", tmp_path / "pe.pt")
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read PE-Core checkpoint")


def test_no_file_options_is_exit_2():
    result = run("--model", "tiny")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: verify-checkpoint needs at least one file: --checkpoint, --lora, --vae or --pe"]


def test_use_ema_without_ema_entry_is_exit_2(tmp_path, tiny_set):
    path = save(stage1_obj(tiny_set["states"]["generator"]), tmp_path / "gen_only.pt")
    result = run("--model", "tiny", "--checkpoint", path, "--use-ema")
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and "generator_ema" in result.output


def test_full_preset_against_tiny_shapes_is_fast_and_allocates_nothing(tmp_path):
    """Right names, tiny shapes: every DiT key and LoRA pair is reported mis-shaped,
    from a meta-built 1.3B model (its fp32 weights would be 5.7 GB)."""
    with torch.device("meta"):
        full = DySinkModels(FULL)
    names = list(full.dit.state_dict())
    small = {k: torch.zeros(2, 2) for k in names}
    dit = save(stage1_obj(small), tmp_path / "small_stage1.pt")
    targets = [n for n, m in full.dit.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    lora = {f"base_model.model.{t}.lora_{ab}.weight": torch.zeros(2, 2) for t in targets for ab in "AB"}
    lora_path = save({"generator_lora": lora}, tmp_path / "small_lora.pt")
    del full

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    result = run("--model", "wan2.1-t2v-1.3b", "--checkpoint", dit, "--lora", lora_path)
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024

    assert result.exit_code == 1, result.output
    out = result.output
    assert "BAD  DiT: 0 missing, 0 unexpected, 825 mis-shaped keys" in out
    assert "mis-shaped  DiT: blocks.0." in out and "... and 1405 more" in out
    assert len(out.splitlines()) < 40, "the verdict per file first, then at most 20 problem lines"
    assert out.splitlines()[1] == "summary:"
    assert "LoRA: 300 A/B pairs, 600 problems" in out
    assert out.splitlines()[-1].startswith("FAILED: 1425 key problems")
    assert elapsed < 15, elapsed
    assert grown_mib < 1024, grown_mib  # the real model would need 5,400+ MiB


def test_unknown_preset_is_a_usage_error(tiny_set):
    result = run("--model", "huge", "--checkpoint", tiny_set["dit"])
    assert result.exit_code == 2
    assert "huge" in result.output


def test_help_lists_the_options():
    result = CliRunner().invoke(main, ["verify-checkpoint", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--checkpoint", "--lora", "--vae", "--pe", "--use-ema"):
        assert option in result.output


def test_lora_missing_some_layers_is_a_warning(tmp_path, tiny_set):
    # PEFT leaves a layer without LoRA weights unchanged, so the reference would
    # run; the user still hears about it, without a failure.
    lora = {k: v for k, v in tiny_set["states"]["lora"].items() if ".blocks.0." in k}
    path = save({"generator_lora": lora}, tmp_path / "half_lora.pt")
    result = run("--model", "tiny", "--lora", path)
    assert result.exit_code == 0, result.output
    assert "10 warnings:" in result.output
    assert "not merged  LoRA: blocks.1.ffn.0 (no LoRA for this layer: base weight used as is)" in result.output
    assert "LoRA: 10 A/B pairs, 0 problems, 10 block Linear layers without LoRA (warning)" in result.output
    assert result.output.splitlines()[-1].startswith("PASSED")


def test_nan_weights_are_reported_by_key(tmp_path, tiny_set):
    gen = dict(tiny_set["states"]["generator"])
    poisoned = gen["head.head.weight"].clone()
    poisoned[0, :3] = float("nan")
    gen["head.head.weight"] = poisoned
    dit = save(stage1_obj(gen), tmp_path / "nan_stage1.pt")
    result = run("--model", "tiny", "--checkpoint", dit)
    assert result.exit_code == 1, result.output
    assert "nan_stage1.pt: head.head.weight: 3 of 4096 values are NaN or Inf" in result.output
    assert result.output.splitlines()[-1].startswith("FAILED")


def test_every_unreadable_file_is_reported_at_once(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"garbage")
    (tmp_path / "b.pth").write_bytes(b"more garbage")
    result = run("--model", "tiny", "--checkpoint", str(tmp_path / "a.pt"), "--vae", str(tmp_path / "b.pth"),
                 "--pe", str(tmp_path / "missing.pt"))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith("error: 3 files cannot be read")
    assert "a.pt" in lines[0] and "b.pth" in lines[0] and "missing.pt" in lines[0]
