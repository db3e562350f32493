"""Stage a: the Triton kernels JIT-compiled on this GPU against the PyTorch references, then timed
against SDPA over the same keys: `dysink-bench kernels`' own check (plugins/gpu_check.py), its
numbers kept."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..plugins import gpu_check
from .result import FAILED, PASSED, SKIPPED, StageResult


def rows_of(collected: dict) -> list[dict]:
    rows = [{"check": c["case"] + (f" ({c['shape']})" if "shape" in c else ""), "result": c["status"],
             "detail": c["detail"]} for c in collected["cases"]]
    for t in collected["timings"]:
        rows.append({"check": f"{t['case']}: gated sink attention, {t['keys']} keys", "result": "timed",
                     "detail": f"{t['op_ms']:.3f} ms = {t['vs_sdpa']:.2f}x SDPA ({t['sdpa_ms']:.3f} ms; target <= "
                               f"{gpu_check.TARGET_VS_SDPA}x); gate kernels {t['gate_ms']:.3f} ms = "
                               f"{100 * t['gate_share']:.1f}% of attention (target < "
                               f"{100 * gpu_check.TARGET_GATE_SHARE:.0f}%)"})
    rows.append({"check": "retrieval over 1,000 entries", "result": "timed",
                 "detail": f"{collected['retrieve_ms']:.4f} ms (target < {gpu_check.TARGET_RETRIEVE_MS} ms)"})
    return rows


def run(kit: Path, out: Path, log: Callable[[str], None], result: StageResult,
        collect: Callable = gpu_check.collect) -> None:
    reason = gpu_check.skip_reason()
    if reason:
        result.finish(SKIPPED, reason)
        return
    collected = collect(log)
    result.numbers.update({k: v for k, v in collected.items() if k not in ("cases",)})
    result.numbers["cases"] = collected["cases"]
    result.rows = rows_of(collected)
    result.notes.append("Timings are reported against the targets, never asserted.")
    failed = [c["case"] for c in collected["cases"] if c["ok"] is False]
    if failed:
        result.finish(FAILED, f"{len(failed)} case(s) failed: {', '.join(failed)}")
    else:
        t = {x["case"]: x for x in collected["timings"]}
        bf16 = t.get("1.3B bf16")
        speed = f"; 1.3B bf16 {bf16['vs_sdpa']:.2f}x SDPA" if bf16 else ""
        result.finish(PASSED, f"{len(collected['cases'])} cases match the references{speed}")
