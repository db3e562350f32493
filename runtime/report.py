"""stats.json and timeline.png of a run.

stats.json (schema documented in README.md, "stats.json") = {"schema", "dysink_deploy", "written_at",
"units", "config", "summary", "blocks": [BlockRecord.to_json(), ...]}; it is rewritten atomically
after every block, so an interrupted run keeps the stats of every block it finished.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from .. import __version__
from ..atomic import temp_prefix, umask_file_mode, write_atomic
from ..errors import DysinkError


STATS_SCHEMA = 2

UNITS = {
    "start_frame, window_frames, frames_recached, evicted_start_frame, retrieved[].start_frame": "latent frames "
    "(a block is 3; latent frame f starts at video frame 4f - 3, frame 0 at 0)",
    "window_frames": "the local window's capacity, not the frames it holds: local_attn_size + block_frames x the "
    "retrieval slots the bank cannot fill yet (top_k - bank_size while positive), the current block included; "
    "15 at block 0 with the released settings, when only the current block exists",
    "frames, summary.video_frames": "video frames (16 fps)",
    "timings_ms, summary.*_ms, prompt_switch.ms": "milliseconds",
    "gate[].ratios, gate[].dropped": "[denoising step][DiT layer]: the fraction of attention heads whose mean "
    "score prefers the sink over the local window, and whether it exceeds gate_threshold (sink dropped)",
    "retrieved[].score, max_similarity": "cosine similarity of memory-bank features",
    "config.timesteps": "model timesteps of denoising_steps after the shift warp (the reference's table)",
}


def summarize(blocks: list[dict], extra: dict | None = None) -> dict:
    """Run-level figures from the block entries (plus wall time / memory the caller measured)."""
    import statistics

    cells = [c for b in blocks for g in b.get("gate", []) for step in g["dropped"] for c in step]
    totals = [b["timings_ms"]["total"] for b in blocks if "timings_ms" in b]
    return {
        "blocks": len(blocks),
        "video_frames": sum(int(b.get("frames", 0)) for b in blocks),
        "median_block_ms": round(statistics.median(totals), 3) if totals else None,
        "blocks_with_retrieval": sum(1 for b in blocks if b.get("retrieved")),
        "sinks_retrieved": sum(len(b.get("retrieved", [])) for b in blocks),
        "gate_drop_fraction": round(sum(cells) / len(cells), 6) if cells else None,
        "dedup_skips": sum(1 for b in blocks if not b.get("stored", True)),
        "evictions": sum(1 for b in blocks if b.get("evicted_start_frame") is not None),
        "prompt_switches": sum(1 for b in blocks if b.get("prompt_switch")),
        "phases_ms": _phases(blocks),
        "video_seconds": round(sum(int(b.get("frames", 0)) for b in blocks) / VIDEO_FPS, 3),
        "final_bank_size": _final_bank(blocks),
        **(extra or {}),
    }


VIDEO_FPS = 16      # Wan2.1's frame rate


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def phase_names(blocks: list[dict]) -> list[str]:
    """The loop's phases in the order they first appear, over every block (a pipelined run's
    `decode_wait` starts at block 1), without `total`."""
    return [k for k in dict.fromkeys(k for b in blocks for k in b.get("timings_ms", {})) if k != "total"]


def _phases(blocks: list[dict]) -> dict:
    """Per phase of the block loop's own timers: median, p90 and max over the blocks, in ms."""
    import statistics

    names = phase_names(blocks) + ["total"]
    out = {}
    for name in names:
        values = [b["timings_ms"][name] for b in blocks if name in b.get("timings_ms", {})]
        if not values:
            continue
        out[name] = {"median": round(statistics.median(values), 3), "p90": round(_percentile(values, 90), 3),
                     "max": round(max(values), 3)}
    return out


def _final_bank(blocks: list[dict]) -> int | None:
    """Bank entries after the last block: its bank size at the start, plus its store, minus its eviction."""
    if not blocks or "bank_size" not in blocks[-1]:
        return None
    last = blocks[-1]
    return last["bank_size"] + bool(last.get("stored")) - (last.get("evicted_start_frame") is not None)


def format_summary(summary: dict) -> list[str]:
    """The run summary as a small table (what dysink-run and dysink-client print at the end)."""
    fps = (f", {summary['video_frames'] / summary['wall_s']:.2f} video frames/s end to end"
           if summary.get("wall_s") else "")
    lines = [f"video: {summary['blocks']} blocks, {summary['video_frames']} frames = {summary['video_seconds']:.2f} s "
             f"at {VIDEO_FPS} fps{fps}",
             f"memory: {summary['blocks_with_retrieval']} blocks retrieved {summary['sinks_retrieved']} sinks, "
             f"gate dropped {_fraction(summary.get('gate_drop_fraction'))} of sink decisions, "
             f"{summary['dedup_skips']} dedup skips, {summary['evictions']} evictions, final bank "
             f"{summary.get('final_bank_size')}" + (f", {summary['prompt_switches']} prompt switches"
                                                     if summary.get("prompt_switches") else "")]
    phases = summary.get("phases_ms") or {}
    if phases:
        width = max(len(n) for n in phases)
        lines.append(f"  {'phase':<{width}}  {'median ms':>10} {'p90 ms':>10} {'max ms':>10}")
        lines += [f"  {n:<{width}}  {v['median']:>10.1f} {v['p90']:>10.1f} {v['max']:>10.1f}" for n, v in phases.items()]
    return lines


def _fraction(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def write_stats(path: str, config: dict, blocks: list[dict], extra: dict | None = None) -> None:
    import datetime

    stats = {"schema": STATS_SCHEMA, "dysink_deploy": __version__,
             "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "units": UNITS, "config": config, "summary": summarize(blocks, extra), "blocks": blocks}
    # allow_nan=False: NaN / Infinity are not JSON (the stream stops at non-finite values before this).
    text = json.dumps(stats, indent=1, sort_keys=False, allow_nan=False)
    write_atomic(path, text.encode())


DECISION_KEYS = ("index", "start_frame", "window_frames", "bank_size", "retrieved", "gate",
                 "fixed_sink_gate", "stored", "evicted_start_frame", "frames")


def decisions(stats: dict, score_digits: int = 4) -> list[dict]:
    """The decision part of each block (no timings; scores rounded) for comparing runs."""
    out = []
    for b in stats["blocks"]:
        d = {k: b[k] for k in DECISION_KEYS if k in b}
        d["retrieved"] = [r["start_frame"] for r in b["retrieved"]]
        d["gate"] = [{"start_frame": g["start_frame"], "dropped": g["dropped"]} for g in b["gate"]]
        d["fixed_sink_gate"] = [{"start_frame": g["start_frame"], "dropped": g["dropped"]}
                                for g in b.get("fixed_sink_gate", [])]
        if b.get("prompt_switch"):
            d["prompt_switch"] = {k: b["prompt_switch"].get(k) for k in ("prompt", "entries_recached",
                                                                          "frames_recached")}
        out.append(d)
    return out


def plot_timeline(stats: dict, path: str) -> None:
    """Retrievals, gate drops, the bank and the time per block, as a PNG (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    blocks = stats["blocks"]
    if not blocks:
        raise DysinkError("no blocks to plot")
    cfg = stats.get("config", {})
    stream = cfg.get("stream", {})
    idx = [b["index"] for b in blocks]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True, constrained_layout=True)
    fig.suptitle(f"{cfg.get('model', '?')} on {cfg.get('backend', '?')}, seed {cfg.get('seed', '?')}: "
                 f"top-k {stream.get('top_k', '?')}, gate threshold {stream.get('gate_threshold', '?')}, "
                 f"dedup threshold {stream.get('dedup_threshold', '?')}, bank capacity {stream.get('bank_capacity', '?')}")
    legend = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "borderaxespad": 0}

    ax = axes[0]
    xs, ys, cs, dropped_x, dropped_y = [], [], [], [], []
    for b in blocks:
        for r, g in zip(b["retrieved"], b["gate"]):
            xs.append(b["index"])
            ys.append(r["start_frame"])
            cs.append(r["score"])
            cells = [c for step in g["dropped"] for c in step]
            if cells and sum(cells) == len(cells):
                dropped_x.append(b["index"])
                dropped_y.append(r["start_frame"])
    ax.plot(idx, [b["start_frame"] for b in blocks], color="0.7", lw=1, label="current block start")
    if xs:
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=28, label="retrieved sink")
        fig.colorbar(sc, ax=ax, pad=0.01, label="retrieval score\n(mean cosine)")
    if dropped_x:
        ax.scatter(dropped_x, dropped_y, facecolors="none", edgecolors="red", s=80,
                   label="dropped in every layer and step")
    ax.set_ylabel("latent frame")
    ax.set_title("Retrieved sinks per block")
    ax.legend(**legend)

    ax = axes[1]
    with_sinks, frac, without = [], [], []
    for b in blocks:
        cells = [c for g in b["gate"] for step in g["dropped"] for c in step]
        if cells:
            with_sinks.append(b["index"])
            frac.append(sum(cells) / len(cells))
        else:
            without.append(b["index"])
    ax.bar(with_sinks, frac, color="tab:red", label="dropped fraction")
    if without:
        ax.bar(without, [1.0] * len(without), color="none", edgecolor="0.8", hatch="//", label="no sinks in this block")
    ax.set_ylim(0, 1)
    ax.set_ylabel("dropped fraction")
    ax.set_title("Sink anomaly gate: fraction of (sink, step, layer) decisions that dropped the sink")
    ax.legend(**legend)

    ax = axes[2]
    ax.step(idx, [b["bank_size"] for b in blocks], where="mid", label="bank size at block start")
    skipped = [b["index"] for b in blocks if not b["stored"]]
    if skipped:
        ax.scatter(skipped, [blocks[i - idx[0]]["bank_size"] for i in skipped], marker="x", color="k",
                   label="not stored (dedup)")
    evicted = [b["index"] for b in blocks if b.get("evicted_start_frame") is not None]
    if evicted:
        ax.scatter(evicted, [blocks[i - idx[0]]["bank_size"] for i in evicted], marker="v", color="tab:orange",
                   label="evicted an entry")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("entries")
    ax.set_title("Memory bank")
    sim = ax.twinx()
    sims = [(b["index"], b["max_similarity"]) for b in blocks if b.get("max_similarity") is not None]
    if sims:
        sim.plot([i for i, _ in sims], [v for _, v in sims], color="tab:green", lw=1, marker=".",
                 label="max similarity to the bank")
    if "dedup_threshold" in stream:
        sim.axhline(stream["dedup_threshold"], color="tab:green", ls=":", lw=1, label="dedup threshold")
    sim.set_ylabel("cosine")
    handles = ax.get_legend_handles_labels()
    more = sim.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", bbox_to_anchor=(1.08, 1.0),
              fontsize=8, borderaxespad=0)

    ax = axes[3]
    phases = phase_names(blocks)
    bottom = [0.0] * len(blocks)
    for k in phases:
        vals = [b["timings_ms"].get(k, 0.0) for b in blocks]
        ax.bar(idx, vals, bottom=bottom, label=k)
        bottom = [a + v for a, v in zip(bottom, vals)]
    ax.set_ylabel("ms")
    ax.set_xlabel("block")
    ax.set_title("Time per block, by phase")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(**legend)

    switches = [b["index"] for b in blocks if b.get("prompt_switch")]
    for n, i in enumerate(switches):
        for a in axes:
            a.axvline(i - 0.5, color="tab:purple", ls="--", lw=1,
                      label="prompt switch (recache)" if (a is axes[0] and n == 0) else None)
    if switches:
        axes[0].legend(**legend)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, umask_file_mode())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
