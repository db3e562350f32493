"""The GPU check of the kernels (`dysink-bench kernels`, `make gpu-check`).

On a CUDA GPU: every case runs the JIT-compiled Triton kernels against the
PyTorch references (ratios and slots identical; outputs within 2x the error
of a plain PyTorch run in the same low precision, SDPA over the same kept
keys, both against the float32 reference), then times them against
`torch.nn.functional.scaled_dot_product_attention` over the same number of
keys held contiguously. `collect` returns the numbers (the GPU kit's stage a,
`dysink_deploy.gpukit`), `run` prints them as a table: True / False when the
cases passed / one failed, None when skipped (exit code 77, exitcodes.SKIPPED).
Timings are printed against the targets, never asserted.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass
from typing import Callable

from . import variants as V

TARGET_VS_SDPA = 1.3          # gated sink attention time / SDPA time at the 1.3B shape
TARGET_GATE_SHARE = 0.05      # gate kernels / attention kernel
TARGET_RETRIEVE_MS = 0.1      # retrieval over 1,000 bank entries


@dataclass(frozen=True)
class Case:
    name: str
    tokens: int
    heads: int
    head_dim: int
    dtype: str
    sinks: int = 2
    locals_: int = 2
    pages: str = "auto"          # --kv-cache-dtype of the pools: auto (q's dtype), bf16, int8, fp8


CASES = [
    Case("tiny fp32", 72, 2, 32, "float32", 2, 4),
    Case("tiny fp16", 72, 2, 32, "float16", 2, 4),
    Case("tiny bf16", 72, 2, 32, "bfloat16", 2, 4),
    Case("tiny fp16, int8 pages", 72, 2, 32, "float16", 2, 4, "int8"),
    Case("tiny fp16, bf16 pages", 72, 2, 32, "float16", 2, 4, "bf16"),
    Case("1.3B bf16", 4680, 12, 128, "bfloat16"),
    Case("1.3B fp16", 4680, 12, 128, "float16"),
    Case("1.3B bf16, int8 pages", 4680, 12, 128, "bfloat16", pages="int8"),
    Case("1.3B bf16, fp8 pages", 4680, 12, 128, "bfloat16", pages="fp8"),     # sm_89 and newer
]


def skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'dysink-deploy[kernels]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    from . import launch    # lazy: torch, triton
    if launch.interpreted():
        return "TRITON_INTERPRET is set: unset it to run the compiled kernels"
    return None


def _inputs(case: Case, seed: int = 0, device: str = "cuda"):
    import torch

    dt = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    pages = case.sinks + case.locals_ + 1
    shape = (case.tokens, case.heads, case.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device).to(dt) for _ in range(3))
    kp = torch.randn((pages, *shape), generator=g, device=device).to(dt)
    vp = torch.randn((pages, *shape), generator=g, device=device).to(dt)
    # Sink page 0 leans towards the mean query, so its gate ratio is high and it is dropped.
    kp[0] += 0.5 * q.float().mean(0).to(dt)
    local_ids = torch.arange(case.sinks, case.sinks + case.locals_, device=device)
    sink_ids = torch.arange(case.sinks, device=device)
    return q, k, v, kp, vp, local_ids, sink_ids


def _pages(case: Case, kp, vp) -> tuple:
    """The pools as `case.pages` stores them -> (k_pool, v_pool, scales {} or k_scale / v_scale,
    the pools as the op reads them, in q's dtype: what the SDPA baseline attends over)."""
    from ..ops.kv_pages import STORAGE, dequantise_pages, quantise_page    # lazy: torch

    if case.pages == "auto":
        return kp, vp, {}, kp, vp
    if case.pages == "bf16":
        kb, vb = kp.to(STORAGE["bf16"]), vp.to(STORAGE["bf16"])
        return kb, vb, {}, kb.to(kp.dtype), vb.to(vp.dtype)
    (kq, ks), (vq, vs) = quantise_page(kp, case.pages), quantise_page(vp, case.pages)
    return (kq, vq, {"k_scale": ks, "v_scale": vs}, dequantise_pages(kq, ks, kp.dtype),
            dequantise_pages(vq, vs, vp.dtype))


def _sdpa_same_keys(q, k, v, kp, vp, local_ids, sink_ids, keep):
    """Plain PyTorch in the inputs' dtype over the kept keys, gathered contiguously: the baseline."""
    import torch
    import torch.nn.functional as F

    pages = [kp[i] for i, kept in zip(sink_ids.tolist(), keep.tolist()) if kept] + [kp[i] for i in local_ids.tolist()]
    vpages = [vp[i] for i, kept in zip(sink_ids.tolist(), keep.tolist()) if kept] + [vp[i] for i in local_ids.tolist()]
    keys = torch.cat(pages + [k]).transpose(0, 1)[None]
    vals = torch.cat(vpages + [v]).transpose(0, 1)[None]
    return F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, vals)[0].transpose(0, 1)


def check_case(case: Case, threshold: float = 0.5, device: str = "cuda") -> dict:
    """`device="cpu"` runs the same check under Triton's interpreter (how the CPU suite tests this code)."""
    import torch

    from ..ops.gated_sink_attention import gated_sink_attention_ref    # lazy: torch
    from . import launch    # lazy: torch, triton

    if case.pages == "fp8" and device != "cpu" and launch.device_arch(torch.device(device)) < V.FP8_MIN_ARCH:
        return {"case": case.name, "ok": None, "detail": f"SKIPPED: fp8 pages need sm_{V.FP8_MIN_ARCH} or newer"}
    q, k, v, kp, vp, local_ids, sink_ids = _inputs(case, device=device)
    kp, vp, scales, kp_read, vp_read = _pages(case, kp, vp)
    out, ratios = launch.gated_sink_attention(q, k, v, kp, vp, local_ids, sink_ids, threshold, True, **scales)
    try:
        ref, ref_ratios = gated_sink_attention_ref(q, k, v, kp, vp, local_ids, sink_ids, threshold, True, **scales)
    except torch.OutOfMemoryError:
        return {"case": case.name, "ok": None, "detail": "SKIPPED: the float32 reference does not fit in memory"}
    keep = ~(ref_ratios > threshold)
    # Baseline rounding: retrieved sinks bf16-rounded like the op does (a no-op for bf16), over the
    # pages as the op reads them (dequantised / cast to q's dtype).
    kp_r, vp_r = kp_read.clone(), vp_read.clone()
    kp_r[sink_ids] = kp_read[sink_ids].to(torch.bfloat16).to(q.dtype)
    vp_r[sink_ids] = vp_read[sink_ids].to(torch.bfloat16).to(q.dtype)
    base = _sdpa_same_keys(q, k, v, kp_r, vp_r, local_ids, sink_ids, keep)
    err = (out.float() - ref.float()).abs().max().item()
    base_err = (base.float() - ref.float()).abs().max().item()
    floor = 1e-5 * max(1.0, ref.float().abs().max().item())
    same_ratios = torch.equal(ratios, ref_ratios)
    ok = same_ratios and err <= 2 * base_err + floor
    return {"case": case.name, "ok": ok, "err": err, "base_err": base_err, "same_ratios": same_ratios,
            "dropped": int((~keep).sum().item()),
            "detail": f"max err {err:.2e} (SDPA {case.dtype}{'' if case.pages == 'auto' else ' on the same pages'}: "
                      f"{base_err:.2e}), ratios "
                      f"{'identical' if same_ratios else 'DIFFER'}, {int((~keep).sum())} of {case.sinks} sinks dropped"}


def check_retrieval(capacity: int = 1000, k: int = 2, feat: int = 512, device: str = "cuda") -> dict:
    import torch

    from ..ops.retrieve_sinks import retrieve_sinks_ref    # lazy: torch
    from . import launch    # lazy: torch, triton

    g = torch.Generator(device=device).manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(capacity, feat, generator=g, device=device), dim=-1)
    start = torch.arange(capacity, device=device) * 3
    queries = torch.nn.functional.normalize(torch.randn(3, feat, generator=g, device=device), dim=-1)
    valid = torch.ones(3, dtype=torch.int32, device=device)
    cur, win = torch.tensor(3 * capacity, device=device), torch.tensor(9, device=device)
    slots, scores = launch.retrieve_sinks(feats, start, queries, valid, cur, win, 0, k)
    ref_slots, ref_scores = retrieve_sinks_ref(feats, start, queries, valid, cur, win, 0, k)
    ok = torch.equal(slots, ref_slots) and torch.allclose(scores, ref_scores, atol=1e-5)
    return {"case": f"retrieve {capacity} x {feat}, k {k}", "ok": ok,
            "detail": f"slots {'identical' if torch.equal(slots, ref_slots) else 'DIFFER'}",
            "fn": lambda: launch.retrieve_sinks(feats, start, queries, valid, cur, win, 0, k)}


def time_attention(case: Case, bench: Callable, device: str = "cuda") -> dict:
    """Median ms of: the whole op, its gate kernels alone, SDPA over the same number of contiguous keys."""
    import torch
    import torch.nn.functional as F

    from . import launch    # lazy: torch, triton

    q, k, v, kp, vp, local_ids, sink_ids = _inputs(case, device=device)
    kp, vp, scales, _, _ = _pages(case, kp, vp)
    keep_all = 1.1   # threshold above every ratio: all sinks attended, like SDPA's key count
    op_ms = bench(lambda: launch.gated_sink_attention(q, k, v, kp, vp, local_ids, sink_ids, keep_all, True, **scales))
    n_sink, n_local = sink_ids.numel(), local_ids.numel()
    partial = torch.empty((n_sink + n_local + 2, case.heads, V.GATE_SPLITS, case.head_dim), device=device)
    ratios = torch.empty(n_sink, device=device)
    arch = launch.device_arch(q.device)
    round_sinks = case.dtype != "bfloat16"

    def gate():
        launch.launch_gate(q, k, kp, local_ids, sink_ids, 0, round_sinks, partial, ratios, arch,
                           scales.get("k_scale"), launch.page_mode(q.dtype, kp.dtype, bool(scales)))

    gate_ms = bench(gate)
    keys = (n_sink + n_local + 1) * case.tokens
    qs = q.transpose(0, 1)[None].contiguous()
    ks = torch.randn((1, case.heads, keys, case.head_dim), device=device).to(q.dtype)
    vs = torch.randn_like(ks)
    sdpa_ms = bench(lambda: F.scaled_dot_product_attention(qs, ks, vs))
    return {"op_ms": op_ms, "gate_ms": gate_ms, "attn_ms": op_ms - gate_ms, "sdpa_ms": sdpa_ms, "keys": keys}


def collect(log: Callable[[str], None] = lambda m: None) -> dict:
    """Every correctness case and every timing, as numbers (the GPU kit's stage a and `run` below
    share it). Needs a CUDA GPU: call `skip_reason()` first."""
    import torch
    import triton
    from triton.testing import do_bench

    cc = torch.cuda.get_device_capability()
    result = {"device": torch.cuda.get_device_name(), "sm": f"sm_{cc[0]}{cc[1]}", "torch": torch.__version__,
              "triton": triton.__version__, "host": platform.node(), "date": datetime.date.today().isoformat(),
              "cases": [], "timings": [], "targets": {"vs_sdpa": TARGET_VS_SDPA, "gate_share": TARGET_GATE_SHARE,
                                                      "retrieve_ms": TARGET_RETRIEVE_MS}}
    for case in CASES:
        res = check_case(case)
        res["status"] = "SKIPPED" if res["ok"] is None else ("PASSED" if res["ok"] else "FAILED")
        res["shape"] = f"{case.tokens} tokens, {case.heads} heads, d {case.head_dim}"
        result["cases"].append(res)
        log(f"{case.name}: {res['status']} ({res['detail']})")
    retrieval = check_retrieval()
    fn = retrieval.pop("fn")
    retrieval["status"] = "PASSED" if retrieval["ok"] else "FAILED"
    result["cases"].append(retrieval)
    log(f"{retrieval['case']}: {retrieval['status']}")

    def bench(f):
        return do_bench(f, warmup=25, rep=100)

    skipped = {c["case"] for c in result["cases"] if c["ok"] is None}
    for case in (c for c in CASES if c.name.startswith("1.3B") and c.name not in skipped):
        t = time_attention(case, bench)
        t.update(case=case.name, vs_sdpa=t["op_ms"] / t["sdpa_ms"], gate_share=t["gate_ms"] / max(t["attn_ms"], 1e-9))
        result["timings"].append(t)
        log(f"{case.name}: gated sink attention {t['op_ms']:.3f} ms, SDPA {t['sdpa_ms']:.3f} ms")
    result["retrieve_ms"] = bench(fn)
    result["ok"] = all(c["ok"] is not False for c in result["cases"])
    return result


def format_lines(result: dict) -> list[str]:
    """The table `dysink-bench kernels` prints (markdown rows)."""
    head = (f"{result['date']} | {result['device']} ({result['sm']}) | torch {result['torch']} | "
            f"triton {result['triton']} | {result['host']}")
    lines = [head, "", "| check | result | detail |", "|---|---|---|"]
    for c in result["cases"]:
        shape = f" ({c['shape']})" if "shape" in c else ""
        lines.append(f"| {c['case']}{shape} | {c['status']} | {c['detail']} |")
    lines += ["", "| timing (median) | ms | vs target |", "|---|---|---|"]
    for t in result["timings"]:
        lines.append(f"| {t['case']}: gated sink attention, {t['keys']} keys | {t['op_ms']:.3f} | "
                     f"{t['vs_sdpa']:.2f}x SDPA (target <= {TARGET_VS_SDPA}x) |")
        lines.append(f"| {t['case']}: SDPA, same keys contiguous | {t['sdpa_ms']:.3f} | |")
        lines.append(f"| {t['case']}: gate kernels | {t['gate_ms']:.3f} | {100 * t['gate_share']:.1f}% of attention "
                     f"(target < {100 * TARGET_GATE_SHARE:.0f}%) |")
    lines.append(f"| retrieval over 1,000 entries | {result['retrieve_ms']:.4f} | target < {TARGET_RETRIEVE_MS} ms |")
    lines.append("")
    lines.append(f"{'PASSED' if result['ok'] else 'FAILED'} | correctness cases above; timings are reported, "
                 "not asserted")
    return lines


def run(log: Callable[[str], None] = print, markdown: str | None = None) -> bool | None:
    """The whole check: True when every correctness case passed, False when one failed, None when it
    was skipped (one `SKIPPED | ...` line logged; callers exit with exitcodes.SKIPPED, 77)."""
    reason = skip_reason()
    if reason:
        log(f"SKIPPED | dysink-bench kernels needs a CUDA GPU: {reason}")
        return None
    result = collect()
    lines = format_lines(result)
    for line in lines:
        log(line)
    if markdown:
        with open(markdown, "w") as fh:
            fh.write("# Kernel GPU check\n\n" + "\n".join(lines) + "\n")
    return result["ok"]
