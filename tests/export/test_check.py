"""dysink-export check (export/check.py, check_cmd.py): its flags."""

from __future__ import annotations

from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main


def test_check_takes_threads(bundles):
    """dysink-export check --threads N pins ONNX Runtime's and PyTorch's threads (a busy machine)."""
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundles("fp32")), "--blocks", "0", "--threads", "1"])
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1].startswith("PASSED"), res.output
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundles("fp32")), "--threads", "0"])
    assert res.exit_code == 2 and "--threads must be >= 1, got 0" in res.output
