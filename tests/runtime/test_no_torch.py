"""The runtime imports and streams with torch blocked (Jetson users should not need torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from tests.no_torch import BLOCK_TORCH  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = BLOCK_TORCH + textwrap.dedent("""
    import sys
    import numpy as np
    import dysink_deploy.runtime as rt
    from dysink_deploy.runtime import cli, run, report, video   # noqa: F401  (all import without torch)
    from dysink_deploy.runtime.backends import tensorrt_backend, onnxruntime_backend   # noqa: F401
    from dysink_deploy.runtime.backends import cuda, cuda_graphs, engine_checks, tensorrt_ops   # noqa: F401
    from dysink_deploy.runtime import dump   # noqa: F401
    from dysink_deploy.config import model_preset
    from dysink_deploy.runtime.stream import Streamer
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from dysink_deploy.runtime.run import stream_to_dir
    from tests.runtime.fake_backend import FakeBackend

    model = model_preset("tiny")
    stream = model.default_stream(dedup_threshold=0.5)
    be = FakeBackend(stream)
    s = Streamer(be, model.dit, stream, default_prompt_embeds(model), seed=3)
    out = sys.argv[1]
    res = stream_to_dir(s, model, stream, 6, out, {"model": "tiny"}, progress=False)
    assert "torch" not in sys.modules, "torch was imported"
    print(res.blocks, res.frames, be.calls["dit_step"])
""")


def test_runtime_streams_with_torch_blocked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks, frames, steps = map(int, proc.stdout.split())
    assert (blocks, frames) == (6, 9 + 5 * 12)
    assert steps == 6 * (4 + 1), "4 denoising steps + 1 clean pass per block"
    stats = json.loads((out / "stats.json").read_text())
    assert [b["index"] for b in stats["blocks"]] == list(range(6))
    assert (out / "video.mp4").stat().st_size > 0 and (out / "timeline.png").stat().st_size > 0
