"""OUTDIR/gpu-check.md and gpu-check.json: the device, the kit, every stage's status and numbers."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_atomic
from .device import device_line
from .result import StageResult, _clean

MARKDOWN = "gpu-check.md"
JSON = "gpu-check.json"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    """Markdown table of dict rows (columns in first-seen order)."""
    if not rows:
        return []
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def kit_summary(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("kit_format", "created", "prepared_on", "archs", "versions", "source",
                                         "contents", "size_bytes")}


def markdown(info: dict, manifest: dict, results: list[StageResult], verdict: str, budget_s: float,
             elapsed_s: float) -> str:
    src = manifest.get("source", {})
    lines = ["# GPU kit check", "",
             f"- date: {info.get('date')}",
             f"- device: {device_line(info)}",
             f"- kit: prepared {manifest.get('created')} on {manifest.get('prepared_on', {}).get('host')}, "
             f"commit {src.get('commit') or 'unknown'}{' (uncommitted changes)' if src.get('dirty') else ''}, "
             f"archs {', '.join(f'sm_{a}' for a in manifest.get('archs', []))}, "
             f"{manifest.get('size_bytes', 0) / 2 ** 20:.1f} MiB",
             f"- budget: {budget_s:.0f} s, used {elapsed_s:.0f} s", "",
             f"**{verdict}**", "", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.stage}: {r.title} | {r.status} | {_cell(r.seconds)} | {_cell(r.detail)} |")
    for r in results:
        lines += ["", f"## {r.stage}: {r.title}", "", f"{r.status}: {r.detail}"]
        if r.rows:
            lines += [""] + table(r.rows)
        if r.notes:
            lines += [""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def write(out: Path, info: dict, manifest: dict, results: list[StageResult], verdict: str, budget_s: float,
          elapsed_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(str(out / MARKDOWN), markdown(info, manifest, results, verdict, budget_s, elapsed_s).encode())
    data = {"verdict": verdict, "device": info, "kit": kit_summary(manifest), "budget_s": budget_s,
            "elapsed_s": round(elapsed_s, 1), "stages": [r.to_json() for r in results]}
    write_atomic(str(out / JSON), json.dumps(_clean(data), indent=1, allow_nan=False).encode())
