"""dysink-export triton-repo: what it writes, and its refusals (no server needed)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main


def _run(*args):
    return CliRunner().invoke(export_main, ["triton-repo", *map(str, args)])


def _one_line(res, needle):
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in res.output, res.output


def test_repo_layout(bundles, tmp_path):
    res = _run("--bundle", bundles("fp32"), "--out", tmp_path / "r", "--instances", 2, "--max-streams", 3)
    assert res.exit_code == 0, res.output
    config = (tmp_path / "r" / "dysink" / "config.pbtxt").read_text()
    assert "decoupled: true" in config and "count: 2, kind: KIND_CPU" in config
    assert 'key: "max_streams" value: { string_value: "3" }' in config
    assert (tmp_path / "r" / "dysink" / "1" / "model.py").is_file()
    assert json.loads((tmp_path / "r" / "dysink_repo.json").read_text())["max_streams"] == 3


@pytest.mark.parametrize("args, needle", [
    (["--instances", 0], "--instances must lie in 1..64"),
    (["--max-streams", 0], "--max-streams must be >= 1"),
    (["--gpus", "0,1"], "--gpus applies to --kind gpu"),
    (["--kind", "gpu", "--gpus", "a"], "--gpus must be comma-separated integers"),
    (["--tokenizer", "{tmp}"], "has no tokenizer.json"),
])
def test_bad_arguments(bundles, tmp_path, args, needle):
    args = [str(a).format(tmp=tmp_path) for a in args]
    _one_line(_run("--bundle", bundles("fp32"), "--out", tmp_path / "r", *args), needle)
    assert not (tmp_path / "r").exists()


def test_out_that_is_not_a_repo_is_left_alone(bundles, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "mine.txt").write_text("keep")
    _one_line(_run("--bundle", bundles("fp32"), "--out", tmp_path / "r"), "already exists")
    _one_line(_run("--bundle", bundles("fp32"), "--out", tmp_path / "r", "--overwrite"),
              "is not a repository made by dysink-export triton-repo")
    assert (tmp_path / "r" / "mine.txt").read_text() == "keep"
