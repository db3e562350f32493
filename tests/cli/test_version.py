"""--version on every command and subcommand: the project's version, one line, exit 0."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dysink_deploy import __version__
from dysink_deploy.cli.bench_cli import main as bench_main
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.runtime.cli import main as run_main
from dysink_deploy.serving.cli import client_main, serve_main

ROOTS = {"dysink-run": run_main, "dysink-export": export_main, "dysink-bench": bench_main,
         "dysink-serve": serve_main, "dysink-client": client_main}
CASES = [(name, []) for name in ROOTS] + [(name, [sub]) for name in ("dysink-export", "dysink-bench")
                                          for sub in sorted(ROOTS[name].commands)]


@pytest.mark.parametrize("root, args", CASES, ids=[" ".join([r, *a]) for r, a in CASES])
def test_version_everywhere(root, args):
    res = CliRunner().invoke(ROOTS[root], [*args, "--version"], prog_name=root)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{root} (dysink-deploy) {__version__}"), res.output
