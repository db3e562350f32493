"""Every command that allocates checks its sizes with the planner's formulas first: absurd sizes are one
line, in well under a second, before any network, pool or session exists."""

from __future__ import annotations

import dataclasses
import time

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime.builder import open_streamer
from dysink_deploy.runtime.spec import RunSpec


def _huge_layers(base: str = "tiny") -> dict:
    m = model_preset(base)
    return dataclasses.replace(m, dit=dataclasses.replace(m.dit, layers=100_000)).to_dict()


def test_run_refuses_100000_layers_before_building(monkeypatch):
    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 24 * 10 ** 9})())
    t0 = time.perf_counter()
    with pytest.raises(DysinkError, match=r"needs about .* GB .* this machine's memory has 24.0 GB available"):
        open_streamer(RunSpec(model_config=_huge_layers(), blocks=1))
    assert time.perf_counter() - t0 < 5


def test_run_refuses_a_window_that_needs_too_much(monkeypatch):
    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 24 * 10 ** 9})())
    # tiny: 73,728 bytes a page; a 3,000,000-frame window holds ~1,000,000 pages = 73.7 GB, and the
    # reference op (torch on the CPU) holds float32 scores over its 72,000,288 keys: 4 * (2 * 2 heads *
    # 72 tokens + 2 * 2 * 2 heads * 32) * 72,000,288 = 156.7 GB more (plan.attention_scores_bytes)
    with pytest.raises(DysinkError, match="needs about 23[0-9].[0-9] GB"):
        open_streamer(RunSpec(model="tiny", settings={"local_attn_size": 3_000_000}))


def test_export_refuses_100000_layers_before_building(tmp_path, monkeypatch):
    import json

    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 24 * 10 ** 9})())
    cfg = tmp_path / "huge.json"
    cfg.write_text(json.dumps(_huge_layers("wan2.1-t2v-1.3b")))     # 4.7 trillion weights
    t0 = time.perf_counter()
    res = CliRunner().invoke(export_main, ["onnx", "--model-config", str(cfg), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "of host memory for its" in res.output, res.output
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "b").exists()
