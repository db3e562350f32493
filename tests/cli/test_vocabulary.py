"""One vocabulary across dysink-run, dysink-export and dysink-bench (issue 12): every shared option
is spelled, typed and documented the same in every command; one style for defaults; every option
has help. Walks the click commands themselves."""

from __future__ import annotations

import re
from collections import defaultdict

import click
import pytest

from dysink_deploy.cli.bench_cli import main as bench_main
from dysink_deploy.cli.common import HELP
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.runtime.cli import main as run_main


def _commands():
    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, cmd
    yield from walk(run_main, "dysink-run")
    yield from walk(export_main, "dysink-export")
    yield from walk(bench_main, "dysink-bench")


def _options():
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option):
                yield path, cmd, p


def test_every_option_has_help():
    missing = [f"{path} {p.opts[0]}" for path, _, p in _options() if not (p.help or "").strip()]
    assert not missing, missing


def test_shared_options_are_registered_and_documented_alike():
    seen = defaultdict(list)
    for path, _, p in _options():
        seen[p.opts[0]].append((path, p))
    # Options that several commands take, and ones that mean different things per command by design.
    per_command = {"--out", "--help", "--report", "--engines", "--plugins", "--backend"}
    for name, uses in seen.items():
        if len(uses) < 2 or name in per_command:
            continue
        assert name in HELP, f"{name} is taken by {[u[0] for u in uses]}: declare it through cli.common.shared"
        for path, p in uses:
            assert p.help.startswith(HELP[name].rstrip(":.")), f"{path} {name}: {p.help!r}"
        kinds = {p.type.name if not isinstance(p.type, click.Choice) else tuple(p.type.choices) for _, p in uses}
        if name not in ("--precision",):           # plugins/kernels take several precisions
            assert len(kinds) == 1, f"{name} has types {kinds} across commands"


@pytest.mark.parametrize("name, must_not", [
    ("--seed", {"dysink-export onnx", "dysink-export check"}),        # noise seed only; weights: --weights-seed
    ("--dtype", None), ("--ema", None), ("--checkpoint-block", None),   # old spellings are gone
])
def test_one_meaning_per_name(name, must_not):
    users = {path for path, _, p in _options() if name in p.opts or name in p.secondary_opts}
    if must_not is None:
        assert not users, f"{name} is still used by {users}"
    else:
        assert not (users & must_not), users
        assert all(HELP["--seed"] in p.help for path, _, p in _options() if "--seed" in p.opts)


def test_one_style_for_defaults():
    bad = []
    for path, cmd, p in _options():
        text = p.help or ""
        if re.search(r"\(default[ :]", text) or re.search(r"\[(?!default: )[^\]]*\]\s*$", text):
            bad.append(f"{path} {p.opts[0]}: {text!r}")
    assert not bad, bad
    # and click renders shown defaults as "[default: X]"
    help_text = run_main.get_help(click.Context(run_main))
    assert "[default: 12]" in help_text and "[default: torch]" in help_text
