"""dysink-export check (export/check.py, check_cmd.py): its flags."""

from __future__ import annotations

from click.testing import CliRunner

from dysink_deploy.bundle import Bundle
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.export.check import OutputCheck, graph_lines


def test_check_takes_threads(bundles):
    """dysink-export check --threads N pins ONNX Runtime's and PyTorch's threads (a busy machine); the
    report is one line per graph (59 outputs: 6 graph lines), not one per output."""
    bundle = Bundle.load(bundles("fp32"))
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundle.path), "--blocks", "0", "--threads", "1"])
    assert res.exit_code == 0 and res.output.strip().splitlines()[-1].startswith("PASSED | 59 outputs"), res.output
    graph_lines = [ln for ln in res.output.splitlines() if ln.startswith("- [")]
    assert [ln.split(":")[0][6:] for ln in graph_lines] == list(bundle.specs), res.output
    assert "- [✓] vae_decode: 25 outputs within tolerance (closest: cache_out_" in res.output
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(bundles("fp32")), "--threads", "0"])
    assert res.exit_code == 2 and "--threads must be an integer in 1..1024, got 0" in res.output


def test_graph_lines_compact_and_failures_in_full():
    ok = [OutputCheck("vae", "frames", 1e-6, 1e-3, 1e-2), OutputCheck("vae", "cache_out_0", 5e-3, 1e-3, 1e-2),
          OutputCheck("vae", "slots", 0.0, 0.0, 0.0, exact=True)]
    lines = graph_lines("vae", ok)
    assert len(lines) == 1 and lines[0].startswith("- [") and "vae: 3 outputs within tolerance" in lines[0]
    assert "closest: cache_out_0 max abs error 5.00e-03 <= tol 1.00e-02" in lines[0]     # error / tol largest
    bad = ok + [OutputCheck("vae", "cache_out_1", 2e-2, 1e-3, 1e-2), OutputCheck("vae", "ids", 3.0, 0.0, 0.0, exact=True)]
    lines = graph_lines("vae", bad)
    assert lines == ["- [x] vae/cache_out_1 max abs error 2.00e-02 > tol 1.00e-02 (max rel error 1.0e-03, "
                     "informative only)", "- [x] vae/ids 3 mismatching elements (tol 0)",
                     "- [x] vae: 2 of 5 outputs out of tolerance"]


def test_check_without_torch_says_it_needs_torch(tmp_path):
    """On a device without torch (the Jetson venv) check names what it needs in one line, no traceback."""
    import subprocess
    import sys

    from tests.no_torch import BLOCK_TORCH

    code = BLOCK_TORCH + "from dysink_deploy.cli.export_cli import main\nmain(sys.argv[1:], prog_name='dysink-export')"
    proc = subprocess.run([sys.executable, "-c", code, "check", "--bundle", str(tmp_path / "b"), "--blocks", "0"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "needs torch" in lines[0] and "check --trt" in lines[0], \
        proc.stderr
