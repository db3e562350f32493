"""The compiled kernels on a CUDA GPU (make gpu-check runs this with TRITON_INTERPRET=0)."""

from __future__ import annotations

import os

import pytest

from dysink_deploy.plugins import gpu_check

_reason = gpu_check.skip_reason()


@pytest.mark.gpu
@pytest.mark.skipif(_reason is not None, reason=f"needs a CUDA GPU and compiled kernels: {_reason}")
@pytest.mark.parametrize("case", gpu_check.CASES, ids=lambda c: c.name.replace(" ", "-"))
def test_kernels_match_references_on_cuda(case):
    res = gpu_check.check_case(case)
    if res["ok"] is None:
        pytest.skip(res["detail"])
    assert res["ok"], res["detail"]


@pytest.mark.gpu
@pytest.mark.skipif(_reason is not None, reason=f"needs a CUDA GPU and compiled kernels: {_reason}")
def test_retrieval_matches_reference_on_cuda():
    res = gpu_check.check_retrieval()
    assert res["ok"], res["detail"]


def test_gpu_check_skips_with_one_line_without_a_gpu():
    if _reason is None:
        pytest.skip("a GPU is present: the check runs for real")
    lines = []
    assert gpu_check.run(log=lines.append) is None          # skipped: not a pass
    assert len(lines) == 1 and lines[0].startswith("SKIPPED | dysink-bench kernels needs a CUDA GPU")


def test_dysink_bench_kernels_exits_77_when_skipped():
    if _reason is None:
        pytest.skip("a GPU is present: the check runs for real")
    from click.testing import CliRunner

    from dysink_deploy.cli.bench_cli import main as bench_main
    from dysink_deploy.exitcodes import SKIPPED

    res = CliRunner().invoke(bench_main, ["kernels"])
    assert res.exit_code == SKIPPED == 77, res.output
    assert res.output.count("SKIPPED |") == 1 and len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter (the CPU suite)")
def test_the_gpu_check_itself_runs_on_cpu():
    """The check's own code (inputs, reference, SDPA baseline, tolerance, timing path) on CPU tensors
    under the interpreter, tiny shapes: so that its first run on a GPU is not its first run at all."""
    tiny = [c for c in gpu_check.CASES if c.name.startswith("tiny")]
    assert {c.pages for c in tiny} == {"auto", "int8", "bf16"} and any(c.pages == "fp8" for c in gpu_check.CASES)
    for case in tiny:                                      # fp32 / fp16 / bf16, int8 and bf16 pages
        res = gpu_check.check_case(case, device="cpu")
        assert res["ok"] and res["same_ratios"] and res["dropped"] >= 1, res["detail"]
    assert gpu_check.check_retrieval(capacity=64, device="cpu")["ok"]
    calls = []
    timing = gpu_check.time_attention(gpu_check.CASES[1], lambda fn: calls.append(fn()) or 1.0, device="cpu")
    assert len(calls) == 3 and timing["keys"] == (2 + 4 + 1) * 72
    int8 = next(c for c in gpu_check.CASES if c.name == "tiny fp16, int8 pages")
    assert len(gpu_check.time_attention(int8, lambda fn: calls.append(fn()) or 1.0, device="cpu")) == 5
    assert len(calls) == 6
