"""`dysink-bench compare`: two runs' decisions, block by block."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.bench_cli import main


def _block(i, retrieved=(), dropped=False, stored=True):
    return {"index": i, "start_frame": 3 * i, "window_frames": min(3 * i, 12), "bank_size": i,
            "retrieved": [{"start_frame": s, "score": 0.91234567} for s in retrieved],
            "gate": [{"start_frame": s, "dropped": dropped} for s in retrieved], "fixed_sink_gate": [],
            "stored": stored, "max_similarity": 0.5, "evicted_start_frame": None, "frames": 12,
            "timings_ms": {"total": 10.0 + i}}


STATS = {"config": {}, "blocks": [_block(0), _block(1, [0]), _block(2, [0, 3], dropped=True)]}


def _write(tmp_path, name, stats):
    d = tmp_path / name
    d.mkdir()
    (d / "stats.json").write_text(json.dumps(stats))
    return str(d)


def test_same_decisions_other_timings(tmp_path):
    other = copy.deepcopy(STATS)
    for b in other["blocks"]:
        b["timings_ms"]["total"] *= 3
    r = CliRunner().invoke(main, ["compare", _write(tmp_path, "a", STATS), _write(tmp_path, "b", other)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "SAME | 3 blocks, identical decisions"


def test_first_difference_is_named(tmp_path):
    other = copy.deepcopy(STATS)
    other["blocks"][2]["gate"][1]["dropped"] = False
    other["blocks"][2]["stored"] = False
    r = CliRunner().invoke(main, ["compare", _write(tmp_path, "a", STATS), _write(tmp_path, "b", other) + "/stats.json"])
    assert r.exit_code == 1
    assert r.output.splitlines()[0] == "DIFFERENT | 1 of 3 blocks; first: block 2 (gate, stored)"


def test_fewer_blocks_is_a_difference(tmp_path):
    short = {"config": {}, "blocks": STATS["blocks"][:2]}
    r = CliRunner().invoke(main, ["compare", _write(tmp_path, "a", STATS), _write(tmp_path, "b", short)])
    assert r.exit_code == 1 and "block counts differ: 3 vs 2" in r.output


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must hold a JSON object"),
    ('{"blocks": 3}', "has no list of blocks"),
    ('{"blocks": [{"index": 0}]}', "is not a stats.json of dysink-run"),
    ("{", "is not valid JSON"),
])
def test_bad_stats_one_line(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = CliRunner().invoke(main, ["compare", str(bad), _write(tmp_path, "a", STATS)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.output


def test_missing_run(tmp_path):
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "nope"), str(tmp_path / "nope2")])
    assert r.exit_code == 2 and "cannot read run" in r.output


def test_settings_that_differ_are_named(tmp_path):
    """Two runs with other settings: compare says which settings differ (nested keys dotted), not
    only DIFFERENT; the block count and the derived timesteps are left out; an empty dict counts as none."""
    a = copy.deepcopy(STATS)
    a["config"] = {"backend": "torch", "seed": 0, "blocks": 3, "checkpoints": {}, "timesteps": [1000.0],
                   "stream": {"top_k": 2, "dedup_threshold": 0.95}}
    b = copy.deepcopy(a)
    b["config"].update(seed=1, blocks=4, timesteps=[999.0])
    b["config"].pop("checkpoints")
    b["config"]["stream"]["top_k"] = 3
    b["blocks"][1]["retrieved"] = [{"start_frame": 0, "score": 0.5}, {"start_frame": 3, "score": 0.4}]
    r = CliRunner().invoke(main, ["compare", _write(tmp_path, "a", a), _write(tmp_path, "b", b)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == "settings that differ (2): seed 0 vs 1; stream.top_k 2 vs 3", r.output
    assert lines[1].startswith("DIFFERENT | 1 of 3 blocks; first: block 1 (retrieved)")
    same = CliRunner().invoke(main, ["compare", _write(tmp_path, "c", a), _write(tmp_path, "d", a)])
    assert same.exit_code == 0 and same.output.strip() == "SAME | 3 blocks, identical decisions"
