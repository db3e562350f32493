"""The one stream builder: dysink-run, the README's Python snippet and a RunSpec open the same
stream, decision for decision."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dysink_deploy import api
from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.builder import open_streamer, resolve_run
from dysink_deploy.runtime.report import decisions
from dysink_deploy.runtime.spec import RunSpec

pytest.importorskip("torch")

BLOCKS = 6
SETTINGS = {"dedup_threshold": 0.985}      # the README snippet's: the bank grows, later blocks retrieve


def _api_decisions(*args, **kwargs) -> list[dict]:
    with api.open_stream(*args, **kwargs) as stream:
        return decisions({"blocks": [b.stats for b in stream.blocks(BLOCKS)]})


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    res = CliRunner().invoke(run_cli.main, ["--model", "tiny", "--backend", "torch", "--blocks", str(BLOCKS),
                                            "--seed", "0", "--threads", "2", "--dedup-threshold", "0.985",
                                            "--quiet", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "timeline.png", "video.mp4"], \
        "a finished run leaves its outputs only (no lock file)"
    return json.loads((out / "stats.json").read_text())


def test_dysink_run_and_the_readme_snippet_decide_alike(cli_run):
    expected = decisions(cli_run)
    assert len(expected) == BLOCKS
    assert any(d["retrieved"] for d in expected), "the comparison must cover retrievals"
    # The README's call, word for word (tests/test_readme.py runs the snippet itself).
    assert _api_decisions(model="tiny", backend="torch", seed=0, settings=SETTINGS) == expected
    # The same stream as a RunSpec, positionally and by keyword.
    spec = RunSpec(model="tiny", seed=0, threads=2, settings=SETTINGS)
    assert _api_decisions(spec) == expected
    assert _api_decisions(spec=spec) == expected


def test_the_cli_fills_the_same_spec_as_the_api():
    kw = {"model": "tiny", "backend": "torch", "seed": 3}
    flags = _cli_kw(["--model", "tiny", "--seed", "3", "--dedup-threshold", "0.985", "--out", "x"])
    from_flags = run_cli.spec_from_flags(flags, {"model", "seed"})
    assert from_flags == RunSpec(**kw, settings=SETTINGS)
    assert from_flags.settings == SETTINGS and from_flags.explicit == {"model", "seed"}


def _cli_kw(args: list[str]) -> dict:
    """dysink-run's parsed flags, as its main() receives them."""
    ctx = run_cli.main.make_context("dysink-run", args)
    return dict(ctx.params)


def test_run_config_names_what_was_opened():
    spec = RunSpec(model="tiny", seed=5, blocks=2)
    streamer, config = open_streamer(spec)
    try:
        assert (config["model"], config["backend"], config["seed"], config["blocks"]) == ("tiny", "torch", 5, 2)
        assert config["prompt_embeds"] == "embedded-default" and config["kernels"] == "reference"
        assert config["stream"] == streamer.cfg.to_dict()
    finally:
        streamer.backend.close()


def test_resolve_refuses_before_any_backend(tmp_path):
    # A schedule whose frame 0 sets the first prompt, given with prompt_embeds too, is refused while
    # resolving (before any weights load); alone, its frame-0 entry becomes the first prompt.
    from safetensors.numpy import save_file

    from dysink_deploy.config import model_preset
    from dysink_deploy.runtime.prompts import default_prompt_embeds

    emb = tmp_path / "p.safetensors"
    save_file({"prompt_embeds": default_prompt_embeds(model_preset("tiny"))}, str(emb))
    schedule = tmp_path / "s.json"
    schedule.write_text(json.dumps([{"frame": 0, "prompt_embeds": "p.safetensors"}]))
    with pytest.raises(Exception, match="RunSpec.prompts sets the prompt of frame 0"):
        resolve_run(RunSpec(prompts=str(schedule), prompt_embeds=str(emb)))
    run = resolve_run(RunSpec(prompts=str(schedule)))
    assert run.switches == [] and run.prompt.shape == (run.model.dit.text_len, run.model.dit.text_dim)


def test_the_api_write_leaves_no_lock(tmp_path):
    with api.open_stream(RunSpec(model="tiny", threads=1)) as stream:
        stream.write(tmp_path / "run", blocks=1)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["stats.json", "timeline.png", "video.mp4"]


def test_a_bundle_alone_streams_on_onnxruntime(bundles, tmp_path):
    """dysink-run --bundle B without --backend picks onnxruntime, as api.open_stream(B) does."""
    pytest.importorskip("onnxruntime")
    res = CliRunner().invoke(run_cli.main, ["--bundle", str(bundles("fp32")), "--blocks", "1", "--threads", "1",
                                            "--quiet", "--out", str(tmp_path / "o")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["config"]["backend"] == "onnxruntime"
    res = CliRunner().invoke(run_cli.main, ["--backend", "torch", "--bundle", str(bundles("fp32")), "--blocks", "1",
                                            "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "--bundle is read by --backend onnxruntime and tensorrt only" in res.output
