"""The optional umt5_encoder graph: exported with --text-encoder-preset / --text-encoder, checked like every
graph, and used by dysink-run on a bundle to encode a prompt with torch blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxscript")
pytest.importorskip("tokenizers")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.cli.export_cli import main as export_main  # noqa: E402
from tests.no_torch import BLOCK_TORCH  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("te") / "b"
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--text-encoder-preset", "tiny",
                                           "--graph", "umt5_encoder", "--graph", "text_encoder", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_graph_matches_the_torch_encoder(bundle, umt5_tokenizer):
    import onnxruntime as ort

    from dysink_deploy.models.umt5 import encode_prompt
    from dysink_deploy.text import PromptTokenizer

    b = Bundle.load(bundle, require=("umt5_encoder",))
    assert b.text_encoder == {"preset": "tiny", "checkpoint": None, "random_seed": 0}
    assert "--text-encoder-preset tiny" in b.rebuild_command()
    ids, mask = PromptTokenizer(umt5_tokenizer)("a cat walks on the beach")
    sess = ort.InferenceSession(str(b.graph_path("umt5_encoder")), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"ids": ids[None], "mask": mask[None]})
    ref = encode_prompt("a cat walks on the beach", umt5_tokenizer, preset="tiny")
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert not got[int(mask.sum()):].any()


def test_check_compares_it_with_pytorch(bundle):
    from dysink_deploy.export.check import check_graphs, reference_models

    b = Bundle.load(bundle, require=("umt5_encoder", "text_encoder"))
    checks = check_graphs(b, reference_models(b), log=lambda m: None)
    mine = [c for c in checks if c.graph == "umt5_encoder"]
    assert mine and all(c.ok for c in mine), [c.line() for c in mine]


def test_run_encodes_a_prompt_without_torch(tmp_path, umt5_tokenizer, bundles):
    """A full tiny bundle plus the text-encoder graph: dysink-run --prompt on onnxruntime, torch blocked."""
    from dysink_deploy.export.onnx_export import export_onnx

    full = export_onnx("tiny", precision="fp32", out=tmp_path / "full", text_encoder={"preset": "tiny"})
    script = BLOCK_TORCH + textwrap.dedent("""
        import sys
        from dysink_deploy.runtime.cli import main
        try:
            main(["--quiet", "--backend", "onnxruntime", "--bundle", sys.argv[1], "--blocks", "2",
                  "--prompt", "a cat walks", "--tokenizer", sys.argv[2], "--out", sys.argv[3]])
        except SystemExit as e:
            assert "torch" not in sys.modules, "torch was imported"
            raise
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(full), str(umt5_tokenizer), str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["summary"]["blocks"] == 2


def test_width_mismatch_and_tokenizer_flag_are_refused(tmp_path):
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--tokenizer", str(tmp_path),
                                           "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--tokenizer is read at run time" in res.output
