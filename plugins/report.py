"""Static report of compiled kernels, no GPU needed.

Per cubin: registers per thread, stack bytes (spills live there), static and
dynamic shared memory, local loads/stores (STL/LDL: spill traffic) and the
number of tensor-core instructions in the SASS: HMMA (mma.sync: sm_80-89,
sm_120), HGMMA (warpgroup MMA: sm_90), UTC*MMA (tcgen05: sm_100/110). Read
with the `cuobjdump` that Triton ships (or the CUDA toolkit's).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import DysinkError

_TC = re.compile(r"\b(HMMA|HGMMA|UTC\w*MMA|IMMA|QMMA|OMMA)\b")
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


@dataclass
class CubinStats:
    registers: int
    stack_bytes: int
    static_shared: int
    local_bytes: int
    tensor_core_instructions: int
    local_memory_instructions: int
    tc_mnemonics: list[str]


def cuobjdump() -> str:
    """Path of a cuobjdump: Triton's own first, then the toolkit's on PATH."""
    try:
        import triton
        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if not found:
        raise DysinkError("no cuobjdump found: install the kernels extra (Triton ships one) or a CUDA toolkit")
    return found


def _run(args: list[str]) -> str:
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise DysinkError(f"{' '.join(args[:2])} failed: {(res.stderr or res.stdout).strip().splitlines()[:1]}")
    return res.stdout


def cubin_stats(path: str | Path, tool: str | None = None) -> CubinStats:
    tool = tool or cuobjdump()
    usage = _RES.search(_run([tool, "-res-usage", str(path)]))
    if not usage:
        raise DysinkError(f"cuobjdump printed no resource usage for {path}")
    sass = _run([tool, "-sass", str(path)])
    mnemonics = _TC.findall(sass)
    local_ops = len(re.findall(r"\b(STL|LDL)\b", sass))
    return CubinStats(int(usage[1]), int(usage[2]), int(usage[3]), int(usage[4]), len(mnemonics), local_ops,
                      sorted(set(mnemonics)))


def report_rows(manifest: dict, root: str | Path) -> list[dict]:
    tool = cuobjdump()
    rows = []
    for entry in manifest["kernels"]:
        stats = cubin_stats(Path(root) / entry["file"], tool)
        ptxas = entry.get("ptxas") or {}
        spill = (ptxas.get("spill_stores") or 0) + (ptxas.get("spill_loads") or 0) \
            if ptxas.get("spill_stores") is not None else None
        rows.append({"arch": entry["arch"], "variant": entry["variant"], "kernel": entry["kernel"],
                     "warps": entry["num_warps"], "stages": entry["num_stages"],
                     "dyn_shared": entry["shared_bytes"], "spill_bytes": spill, **stats.__dict__})
    return rows


def is_target(r: dict) -> bool:
    """float32 attention (exact IEEE dots, the parity-check path) is reported but not held
    to the no-spill target; every other kernel is."""
    return not (r["kernel"] == "paged_attention" and "float32" in r["variant"])


def row_ok(r: dict) -> bool:
    """No spill bytes (ptxas) and no stack; tensor cores in every 16-bit attention kernel."""
    needs_tc = r["kernel"] == "paged_attention" and "float32" not in r["variant"]
    spilled = r["spill_bytes"] if r["spill_bytes"] is not None else r["local_memory_instructions"]
    return spilled == 0 and r["stack_bytes"] == 0 and (r["tensor_core_instructions"] > 0 or not needs_tc)


def format_report(rows: list[dict], markdown: bool = False) -> list[str]:
    header = ["arch", "variant", "regs", "spill B", "stack B", "local ld/st", "smem B", "tensor-core instr", "ok"]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    else:
        lines.append(f"{'arch':<6} {'variant':<72} {'regs':>4} {'spill':>5} {'stack':>5} {'ldst':>4} "
                     f"{'smem':>7} {'tc':>4}  ok")
    for r in rows:
        smem = r["dyn_shared"] + r["static_shared"]
        tc = f"{r['tensor_core_instructions']} {'/'.join(r['tc_mnemonics'])}".strip()
        spill = "?" if r["spill_bytes"] is None else r["spill_bytes"]
        mark = "yes" if row_ok(r) else ("NO" if is_target(r) else "no (fp32, not a target)")
        if markdown:
            lines.append(f"| sm_{r['arch']} | {r['variant']} | {r['registers']} | {spill} | {r['stack_bytes']} | "
                         f"{r['local_memory_instructions']} | {smem} | {tc} | {mark} |")
        else:
            lines.append(f"sm_{r['arch']:<3} {r['variant']:<72} {r['registers']:>4} {spill:>5} {r['stack_bytes']:>5} "
                         f"{r['local_memory_instructions']:>4} {smem:>7} {r['tensor_core_instructions']:>4}  {mark}")
    return lines


def report_ok(rows: list[dict]) -> bool:
    return all(row_ok(r) for r in rows if is_target(r))
