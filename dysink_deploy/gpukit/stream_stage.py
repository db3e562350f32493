"""Stage c: the torch backend on CUDA makes the CPU's decisions, with sync-free denoising steps.

A 12-block tiny stream (random weights, seed 0; dedup 0.985 so that the bank grows, gate 0.5 so
that sinks drop), run at --prepare on the CPU with the PyTorch references, is run here on CUDA with
the Triton kernels and with the references; `runtime.report.decisions` of each must equal the CPU's
(windows, bank sizes, retrieved entries, gate drops, stores, evictions). Inside every block's
denoising steps and clean pass (Backend.denoise_scope) torch's sync debug mode is "error": any
device-to-host synchronization there raises. Reads at the block's boundaries (retrieval scores,
frames, the feature) are allowed. TF32 is off so that float32 means float32, as on the CPU. A third
run replays the steps as CUDA graphs (RunSpec.cuda_graph) and must decide alike too.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from ..runtime.builder import open_streamer
from ..runtime.report import decisions
from ..runtime.spec import RunSpec
from . import kit as K
from .result import FAILED, PASSED, SKIPPED, StageResult

BLOCKS = 12
SETTINGS = {"dedup_threshold": 0.985, "gate_threshold": 0.5}


def stream_spec(device: str = "cpu", kernels: str = "reference", blocks: int = BLOCKS, cuda_graph: bool = False) -> RunSpec:
    return RunSpec(model="tiny", seed=0, weights_seed=0, blocks=blocks, settings=SETTINGS, device=device,
                   precision="fp32", kernels=kernels, cuda_graph=cuda_graph)


def run_stream(device: str = "cpu", kernels: str = "reference", sync_debug: str | None = None,
               blocks: int = BLOCKS, cuda_graph: bool = False) -> list[dict]:
    """The stream's block records (stats.json's `blocks`)."""
    streamer, _ = open_streamer(stream_spec(device, kernels, blocks, cuda_graph))
    try:
        streamer.backend.sync_debug = sync_debug
        return [r.to_json() for r in streamer.blocks(blocks)]
    finally:
        streamer.backend.close()


def reference_run(blocks: int = BLOCKS) -> dict:
    """What --prepare stores: the CPU run with the references."""
    records = run_stream("cpu", "reference", blocks=blocks)
    spec = {"model": "tiny", "seed": 0, "weights_seed": 0, "precision": "fp32", "blocks": blocks, "settings": SETTINGS,
            "device": "cpu", "kernels": "reference", "torch": torch.__version__}
    return {"spec": spec, "blocks": records, "decisions": decisions({"blocks": records})}


def compare(reference: dict, blocks: list[dict]) -> dict:
    """Decisions of `blocks` vs the reference's -> {"same", "blocks", "differ", "first": {...} or None}."""
    want, got = reference["decisions"], decisions({"blocks": blocks})
    differ = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
    if len(want) != len(got):
        differ.append(min(len(want), len(got)))
    first = None
    if differ:
        i = differ[0]
        a, b = (want[i] if i < len(want) else {}), (got[i] if i < len(got) else {})
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        first = {"block": i, "fields": fields, "cpu": {k: a.get(k) for k in fields}, "cuda": {k: b.get(k) for k in fields}}
    return {"same": not differ, "blocks": len(got), "differ": len(differ), "first": first}


def dedup_margin(blocks: list[dict]) -> float | None:
    """Closest |max_similarity - dedup threshold| over the blocks: how near a store decision came to flipping."""
    sims = [b["max_similarity"] for b in blocks if b.get("max_similarity") is not None]
    return min(abs(s - SETTINGS["dedup_threshold"]) for s in sims) if sims else None


def sync_check_is_live(device: str = "cuda") -> bool:
    """True when torch's sync debug mode "error" does raise on a device-to-host read here."""
    before = torch.cuda.get_sync_debug_mode()
    x = torch.zeros(1, device=device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        x.item()
    except RuntimeError:
        return True
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return False


def strict_float32() -> list[str]:
    """TF32 off for matmuls and cuDNN convolutions (the CPU reference computes in float32)."""
    done = []
    torch.set_float32_matmul_precision("highest")
    done.append("matmul precision highest")
    try:
        torch.backends.cudnn.allow_tf32 = False
        done.append("cuDNN TF32 off")
    except RuntimeError as exc:        # a torch that refuses the legacy flag after the new API was used
        done.append(f"cuDNN TF32 flag refused ({exc})")
    return done


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "dysink_deploy" in f.filename
              or "/runtime/" in f.filename or "/plugins/" in f.filename]
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""


def check_kernels(kernels: str, reference: dict, device: str, log: Callable[[str], None],
                  cuda_graph: bool = False) -> dict:
    """One CUDA run compared with the reference (as many blocks) -> a table row."""
    t0 = time.perf_counter()
    row = {"kernels": kernels + (" + CUDA graph" if cuda_graph else ""), "blocks": None, "decisions": None,
           "sync-free steps": None, "seconds": None}
    try:
        blocks = run_stream(device, kernels, sync_debug="error" if device.startswith("cuda") else None,
                            blocks=int(reference["spec"]["blocks"]), cuda_graph=cuda_graph)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        sync = "synchroniz" in text.lower()
        row.update({"sync-free steps": "NO" if sync else "?", "result": FAILED,
                    "detail": (f"a host sync inside the denoising steps{_where(exc)}: {text[:200]}" if sync
                               else f"{type(exc).__name__}{_where(exc)}: {text[:200]}")})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row
    cmp = compare(reference, blocks)
    row.update({"blocks": cmp["blocks"], "decisions": "identical" if cmp["same"] else f"{cmp['differ']} blocks differ",
                "sync-free steps": "yes" if device.startswith("cuda") else "not checked (CPU)",
                "seconds": round(time.perf_counter() - t0, 1), "result": PASSED if cmp["same"] else FAILED,
                "detail": "" if cmp["same"] else f"first: block {cmp['first']['block']}: {cmp['first']}",
                "dedup margin": dedup_margin(blocks)})
    log(f"{row['kernels']}: {row['decisions']} in {row['seconds']} s")
    return row


def run(kit: Path, out: Path, log: Callable[[str], None], result: StageResult, device: str = "cuda",
        kernels: list[str] | None = None) -> None:
    """`device` / `kernels`: the CPU tests run the same code with "cpu" and the references alone."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        result.finish(SKIPPED, "no CUDA GPU visible to torch")
        return
    reference = json.loads((Path(kit) / K.STREAM_REFERENCE).read_text())
    if device.startswith("cuda"):
        result.notes += strict_float32()
        live = sync_check_is_live(device)
        result.numbers["sync_debug_live"] = live
        if not live:
            result.finish(FAILED, "torch.cuda.set_sync_debug_mode('error') did not raise on .item(): the "
                                  "sync-free check would prove nothing")
            return
    if kernels is None:
        kernels = ["triton", "reference"]
        try:
            from ..plugins import launch  # noqa: F401  # lazy: triton
        except ImportError as exc:
            kernels = ["reference"]
            result.notes.append(f"Triton kernels not run: {exc}")
    runs = [(k, False) for k in kernels]
    if device.startswith("cuda"):       # the torch backend's CUDA graphs: the same decisions
        runs.append((kernels[0], True))
    for k, graph in runs:
        result.rows.append(check_kernels(k, reference, device, log, cuda_graph=graph))
        result.save()
    result.numbers["cpu_reference"] = reference["spec"]
    bad = [r for r in result.rows if r["result"] != PASSED]
    if bad:
        result.finish(FAILED, "; ".join(f"{r['kernels']}: {r['detail'] or r['decisions']}" for r in bad)[:400])
    else:
        result.finish(PASSED, f"{reference['spec']['blocks']} blocks, decisions identical to the CPU's with "
                              f"{', '.join(r['kernels'] for r in result.rows)}; no host sync inside the denoising steps")
