"""`dysink-run` as its console script starts it (runtime/cli.main, the process's own command line), with
one change: the backend is the numpy FakeBackend of tests/runtime, paced by DYSINK_TEST_PACE_S seconds
per block. Everything the durable-output tests judge is the real command: flags, the --out lock, the
block loop, video.mp4, stats.json, timeline.png, the final line, exit codes and signal handling; only
torch's start-up (seconds per process) is left out, so the tests can kill and signal many runs.

    python tests/durable_harness.py --quiet --model tiny --blocks 8 --out DIR
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dysink_deploy.runtime import builder  # noqa: E402
from tests.runtime.fake_backend import FakeBackend  # noqa: E402

PACE_S = float(os.environ.get("DYSINK_TEST_PACE_S", "0.05"))


class PacedFakeBackend(FakeBackend):
    def decode(self, latent, first):
        time.sleep(PACE_S)              # the model's work: where a signal usually finds the run
        return super().decode(latent, first)


def _backend(run, sessions=None, models=None):
    return PacedFakeBackend(run.stream), {"precision": "fp32", "device": "cpu", "kernels": "fake"}


builder._backend = _backend

if __name__ == "__main__":
    from dysink_deploy.runtime.cli import main

    main()
