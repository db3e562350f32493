"""stats.json: a run summary, version and time stamp, units, reasons; every key documented in the README."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from click.testing import CliRunner

from dysink_deploy import __version__
from dysink_deploy.runtime.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_summary_and_schema(tmp_path):
    res = CliRunner().invoke(main, ["--quiet", "--blocks", "5", "--dedup-threshold", "0.985", "--bank-capacity", "2",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["schema"] == 2 and stats["dysink_deploy"] == __version__
    datetime.datetime.fromisoformat(stats["written_at"])
    blocks, summary = stats["blocks"], stats["summary"]
    assert summary["blocks"] == 5 and summary["video_frames"] == 9 + 4 * 12
    assert summary["dedup_skips"] == sum(not b["stored"] for b in blocks)
    assert summary["evictions"] == sum(b["evicted_start_frame"] is not None for b in blocks)
    assert summary["sinks_retrieved"] == sum(len(b["retrieved"]) for b in blocks)
    cells = [c for b in blocks for g in b["gate"] for s in g["dropped"] for c in s]
    assert summary["gate_drop_fraction"] == (round(sum(cells) / len(cells), 6) if cells else None)
    assert summary["wall_s"] > 0 and summary["peak_rss_mb"] > 0 and summary["median_block_ms"] > 0
    assert blocks[0]["stored_reason"] == "first entry of an empty bank"
    for b in blocks[1:]:
        assert ("dedup: similarity" in b["stored_reason"]) == (not b["stored"])
    assert any("evicted the entry at frame" in b["stored_reason"] for b in blocks), "capacity 2 evicts"
    assert "latent frames" in json.dumps(stats["units"]) and "video frames" in json.dumps(stats["units"])


def test_every_key_is_documented_in_the_readme(tmp_path):
    res = CliRunner().invoke(main, ["--quiet", "--blocks", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    text = README.read_text()
    section = text[text.index("## stats.json"):]
    section = section[:section.index("\n## ", 4)]
    keys = set(stats) | set(stats["summary"]) | set(stats["blocks"][0])
    undocumented = sorted(k for k in keys if not re.search(rf"`{re.escape(k)}`", section))
    assert not undocumented, f"document in README.md, section 'stats.json': {undocumented}"
