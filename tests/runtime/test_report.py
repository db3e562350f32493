"""The run summary (stats.json's `summary`, printed as a table at the end of a run), worked by hand."""

from __future__ import annotations

from click.testing import CliRunner

from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.report import format_summary, summarize


def _block(i, total, stored=True, evicted=None, bank=0, retrieved=0):
    return {"index": i, "frames": 9 if i == 0 else 12, "bank_size": bank, "stored": stored,
            "evicted_start_frame": evicted, "retrieved": [{"start_frame": 0, "score": 0.5}] * retrieved,
            "gate": [{"start_frame": 0, "dropped": [[True, False]]}] * retrieved,
            "timings_ms": {"denoise": total * 0.75, "total": total}}


def test_summary_figures_by_hand():
    blocks = [_block(0, 100.0, bank=0), _block(1, 300.0, bank=1), _block(2, 200.0, stored=False, bank=2, retrieved=1),
              _block(3, 400.0, evicted=3, bank=2, retrieved=2)]
    s = summarize(blocks, {"wall_s": 2.0})
    assert s["video_frames"] == 9 + 3 * 12 and s["video_seconds"] == round(45 / 16, 3)
    # nearest-rank p90 of [100, 200, 300, 400] is the 4th value; the median is 250
    assert s["phases_ms"]["total"] == {"median": 250.0, "p90": 400.0, "max": 400.0}
    assert s["phases_ms"]["denoise"]["median"] == 187.5
    assert s["final_bank_size"] == 2 + 1 - 1            # the last block stored one and evicted one
    assert s["dedup_skips"] == 1 and s["evictions"] == 1 and s["gate_drop_fraction"] == 0.5
    lines = format_summary(s)
    assert lines[0] == "video: 4 blocks, 45 frames = 2.81 s at 16 fps, 22.50 video frames/s end to end"
    assert "gate dropped 50.0% of sink decisions, 1 dedup skips, 1 evictions, final bank 2" in lines[1]
    assert lines[2].split() == ["phase", "median", "ms", "p90", "ms", "max", "ms"]
    assert lines[-1].split() == ["total", "250.0", "400.0", "400.0"]


def test_a_phase_that_starts_later_is_summarised_and_total_stays_last():
    """A pipelined run's decode_wait is in blocks 1.. only (block 0 decodes in its own step)."""
    blocks = [_block(0, 100.0), _block(1, 300.0), _block(2, 200.0)]
    for b, wait in zip(blocks[1:], (4.0, 8.0)):
        b["timings_ms"] = {"denoise": b["timings_ms"]["denoise"], "decode_wait": wait, "total": b["timings_ms"]["total"]}
    s = summarize(blocks, {"wall_s": 1.0})
    assert list(s["phases_ms"]) == ["denoise", "decode_wait", "total"]
    assert s["phases_ms"]["decode_wait"]["median"] == 6.0
    assert format_summary(s)[-1].split()[0] == "total"


def test_dysink_run_prints_the_summary_before_its_verdict(tmp_path):
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--blocks", "2", "--threads", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("video: 2 blocks, 21 frames") and lines[-1].startswith("DONE | 2 blocks")
    assert any(line.split()[:1] == ["denoise"] for line in lines)
