"""The README followed top to bottom, as a new user would after `make demo`: every command of its
`<!-- readme-flow -->` block runs, in order, in the repository (CPU only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _flow_block() -> str:
    text = (ROOT / "README.md").read_text()
    after = text.split("<!-- readme-flow -->", 1)[1]
    return re.search(r"```bash\n(.*?)```", after, re.S).group(1)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(),
                    reason="the README flow runs in the project's .venv (make test / make demo create it)")
def test_readme_flow_runs_as_written(tmp_path):
    """In a scratch folder that looks like the checkout to the commands (the venv and the Makefile's
    inputs linked in), so that the user's own bundles/, out/ and demo-out/ are never touched."""
    block = _flow_block()
    assert block.startswith("source .venv/bin/activate")
    for name in (".venv", "pyproject.toml", "Makefile"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    # -o: the venv is the checkout's, installed already (never reinstalled from this scratch folder)
    demo = subprocess.run(["make", "-o", ".venv/.installed-stamp", "demo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env=env)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (tmp_path / "demo-out" / "video.mp4").is_file()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert out.count("DONE |") >= 3 and "SAME | 6 blocks" in out and "VALID |" in out
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["summary"]["blocks"] == 6
