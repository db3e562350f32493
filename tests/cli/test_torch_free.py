"""dysink-export without PyTorch (what a Jetson's runtime venv has): the group and every subcommand's
--help start, and the commands that need no torch work; those that do need it say so in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dysink_deploy.cli.export_cli import main as export_main
from tests.no_torch import BLOCK_TORCH

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RUN = BLOCK_TORCH + """
from dysink_deploy.cli.export_cli import main
try:
    main(sys.argv[1:], prog_name="dysink-export")
finally:
    assert "torch" not in sys.modules, "torch was imported"
"""


def _export(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_every_help_starts_without_torch():
    for name in ["", *sorted(export_main.commands)]:
        proc = _export(*([name] if name else []), "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (name, proc.stderr[-1500:])


def test_torch_free_commands_work(bundles, tmp_path):
    bundle = bundles("fp32")
    for args, needle in [(["inspect", "--bundle", bundle, "--quick"], "VALID"),
                         (["check", "--bundle", bundle, "--trt", "10.3", "--trt", "11"], "PASSED"),
                         (["trt-onnx", "--bundle", bundle, "--out", tmp_path / "trt"], "DONE"),
                         (["plan", "--model", "wan2.1-t2v-1.3b", "--memory", "16GB", "--platform", "desktop"],
                          "PASSED")]:
        proc = _export(*args)
        assert proc.returncode == 0 and needle in proc.stdout, (args, proc.stdout[-1500:], proc.stderr[-1500:])


@pytest.mark.parametrize("args, needle", [
    (["verify-checkpoint", "--model", "tiny", "--vae", "x.pth"], "verify-checkpoint reads checkpoints with PyTorch"),
])
def test_commands_that_need_torch_say_so(args, needle, tmp_path):
    proc = _export(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines and lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
