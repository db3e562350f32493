"""A bad value in `--config FILE` is named by its key in the file, with the file (issue 23), not by
the flag that would have set it; a bad flag keeps its flag name. Window capacity in stats' units."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dysink_deploy.config import StreamConfig
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.builder import resolve_run
from dysink_deploy.runtime.report import UNITS
from dysink_deploy.runtime.spec import RunSpec


def _run(*args):
    return CliRunner().invoke(run_cli.main, ["--quiet", *map(str, args)], catch_exceptions=False)


def _error(res) -> str:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.mark.parametrize("settings, message", [
    ({"top_k": "x"}, "top_k must be an integer >= 0, got 'x'"),
    ({"dedup_threshold": 7}, "dedup_threshold must lie in [-1, 1], got 7"),
    ({"topk": 3}, "unknown stream setting(s): topk"),
])
def test_bad_value_in_the_file_is_named_by_its_key(tmp_path, settings, message):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    line = _error(_run("--out", tmp_path / "o", "--config", path))
    assert line.startswith(f"error: --config {path}: {message}"), line
    assert "--top-k" not in line and "--dedup-threshold" not in line
    assert not (tmp_path / "o").exists()


def test_bad_flag_keeps_its_flag_name_beside_a_file(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"top_k": 1, "gate_threshold": 0.5}))
    line = _error(_run("--out", tmp_path / "o", "--config", path, "--gate-threshold", 2))
    assert line == "error: --gate-threshold must lie in [0, 1], got 2.0", line   # the flag overrode the file


def test_python_api_names_the_config_file(tmp_path):
    """What api.open_stream(RunSpec(...)) resolves first: the message names RunSpec.config_file."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"shift": "abc"}))
    with pytest.raises(DysinkError, match=r"RunSpec\.config_file .*settings\.json: shift must be a finite number"):
        resolve_run(RunSpec(model="tiny", backend="torch", config_file=str(path)))


def test_window_frames_is_documented_as_a_capacity():
    """stats.json's units say what window_frames is; the figure they quote is the released settings'."""
    text = UNITS["window_frames"]
    assert "capacity" in text and "15 at block 0" in text
    assert StreamConfig().window_frames(0) == 15 and StreamConfig().window_frames(2) == 9
