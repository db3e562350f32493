"""stats.json and timeline.png of a run.

stats.json = {"config": {...}, "blocks": [BlockRecord.to_json(), ...]}; it is
rewritten atomically after every block, so an interrupted run keeps the
stats of every block it finished.
"""

from __future__ import annotations

import json
import os
import tempfile

from ..errors import DysinkError


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_stats(path: str, config: dict, blocks: list[dict]) -> None:
    # allow_nan=False: NaN / Infinity are not JSON (the stream stops at non-finite values before this).
    text = json.dumps({"config": config, "blocks": blocks}, indent=1, sort_keys=False, allow_nan=False)
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
    """Retrievals, gate drops and bank size over blocks, as a PNG (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = stats["blocks"]
    if not blocks:
        raise DysinkError("no blocks to plot")
    idx = [b["index"] for b in blocks]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, constrained_layout=True)

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
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=28, label="retrieved sink (colour: score)")
        fig.colorbar(sc, ax=ax, pad=0.01, label="score")
    if dropped_x:
        ax.scatter(dropped_x, dropped_y, facecolors="none", edgecolors="red", s=80,
                   label="dropped in every layer and step")
    ax.set_ylabel("latent frame")
    ax.set_title("Retrieved sinks per block")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    frac = []
    for b in blocks:
        cells = [c for g in b["gate"] for step in g["dropped"] for c in step]
        frac.append(sum(cells) / len(cells) if cells else 0.0)
    ax.bar(idx, frac, color="tab:red")
    ax.set_ylim(0, 1)
    ax.set_ylabel("dropped fraction")
    ax.set_title("Sink anomaly gate: fraction of (entry, step, layer) decisions that dropped the sink")

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
    ax.set_ylabel("entries")
    ax.set_xlabel("block")
    ax.set_title("Memory bank")
    ax.legend(loc="upper left", fontsize=8)

    switches = [b["index"] for b in blocks if b.get("prompt_switch")]
    for n, i in enumerate(switches):
        for a in axes:
            a.axvline(i - 0.5, color="tab:purple", ls="--", lw=1,
                      label="prompt switch (recache)" if (a is axes[0] and n == 0) else None)
    if switches:
        axes[0].legend(loc="upper left", fontsize=8)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
