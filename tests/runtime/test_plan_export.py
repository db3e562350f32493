"""`dysink-export plan` says what the export itself takes on the desktop (host memory, disk), and its
hints name the precision that was planned (issue 23: the Jetson path exports on a desktop)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime.plan import check_allocation, parse_memory

# Parameter counts of the 1.3B preset's networks (tests/runtime/test_plan.py checks the planner's
# counts against the modules): DiT 1,418,996,800, VAE decoder 73,295,603, PE-Core 23,782,656.
DIT, VAE, PE = 1_418_996_800, 73_295_603, 23_782_656


def test_plan_prints_the_export_host_memory_and_bundle_disk():
    res = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "fp16",
                                           "--memory", "30GB", "--platform", "jetson"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("export ("))
    host = (DIT + VAE + PE) * 4 / 1e9                # float32 while built; the cast frees it tensor by tensor
    disk = (DIT + 2 * VAE + PE) * 2 / 1e9             # the VAE decoder is in vae_decode_first and vae_decode
    assert f"at least {host:.1f} GB of free host memory" in line, line
    assert f"about {disk:.1f} GB of disk" in line and "estimate" in line, line


def test_plan_warns_that_orin_needs_fp16_for_bf16():
    res = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16",
                                           "--memory", "30GB", "--platform", "jetson"])
    assert res.exit_code == 0, res.output
    assert "JetPack 6.2" in res.output and "TensorRT 10.3" in res.output and "--precision fp16" in res.output
    fp16 = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "fp16",
                                            "--memory", "30GB", "--platform", "jetson"])
    assert "TensorRT 10.3" not in fp16.output


def test_refusal_hint_names_the_planned_precision():
    """The plan command a refusal points to plans the same precision (plan's default is fp32)."""
    m = model_preset("wan2.1-t2v-1.3b")
    with pytest.raises(DysinkError, match=r"dysink-export plan --model wan2.1-t2v-1.3b --precision bf16 --memory"):
        check_allocation(m, m.default_stream(), "bf16", parse_memory("8GB"), "the GPU")
