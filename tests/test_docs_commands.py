"""The commands the docs give exist as written (issue 23): every flag of every dysink command in
docs/jetson.md and the README's Weights section is an option of that command, the guide's planner
lines run, the README's trtexec line is the one `trt-onnx` prints, and docs/serving.md's first
commands work after `make demo` (bundles/tiny-fp32 already there)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dysink_deploy.cli.bench_cli import main as bench_main
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.runtime.cli import main as run_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
JETSON = (ROOT / "docs" / "jetson.md").read_text()
SERVING = (ROOT / "docs" / "serving.md").read_text()
GROUPS = {"dysink-export": export_main, "dysink-bench": bench_main}


def _bash_lines(text: str) -> list[str]:
    """The shell lines of the ```bash blocks, continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _dysink_commands(text: str) -> list[tuple[str, click.Command, list[str]]]:
    """(line, click command, argv after the command) of every dysink-* command in `text`'s bash blocks."""
    found = []
    for line in _bash_lines(text):
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):      # VAR=value before the command
            words.pop(0)
        if not words or not words[0].startswith("dysink-"):
            continue
        if words[0] in GROUPS:
            found.append((line, GROUPS[words[0]].commands[words[1]], words[2:]))
        elif words[0] == "dysink-run":
            found.append((line, run_main, words[1:]))
    return found


def _unknown_flags(cmd: click.Command, argv: list[str]) -> list[str]:
    known = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
    return [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in known]


def _weights_section() -> str:
    return README.split("## Weights", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("doc", ["jetson", "weights"])
def test_every_flag_in_the_docs_exists(doc):
    text = JETSON if doc == "jetson" else _weights_section()
    commands = _dysink_commands(text)
    assert len(commands) >= (8 if doc == "jetson" else 1), [c[0] for c in commands]
    bad = {line: _unknown_flags(cmd, argv) for line, cmd, argv in commands if _unknown_flags(cmd, argv)}
    assert not bad, bad


def test_the_jetson_guide_plans_run():
    plans = [(line, argv) for line, cmd, argv in _dysink_commands(JETSON) if cmd.name == "plan"]
    assert plans, "the guide shows the planner"
    for line, argv in plans:
        res = CliRunner().invoke(export_main, ["plan", *argv])
        assert res.exit_code == 0 and res.output.strip().splitlines()[-1].startswith("PASSED"), (line, res.output)


def test_readme_trtexec_line_is_what_trt_onnx_prints(bundles, tmp_path, monkeypatch):
    shutil.copytree(bundles("fp32"), tmp_path / "bundles" / "tiny-fp32")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(export_main, ["trt-onnx", "--bundle", "bundles/tiny-fp32", "--out",
                                           "bundles/tiny-fp32-trt"])
    assert res.exit_code == 0, res.output
    printed = {ln.strip() for ln in res.output.splitlines() if ln.strip().startswith("trtexec ")}
    readme = [ln for ln in _bash_lines(README) if ln.startswith("trtexec ")]
    assert readme and all(ln in printed for ln in readme), (readme, printed)
    # and the README builds the plugin library where that line (and build's default) looks for it
    plugins_out = next(shlex.split(ln) for ln in _bash_lines(README) if ln.startswith("dysink-export plugins "))
    library = Path(plugins_out[plugins_out.index("--out") + 1]) / "libdysink_plugins.so"
    assert all(f"--dynamicPlugins={library}" in ln for ln in readme), (library, readme)


def test_serving_doc_starts_after_make_demo(bundles, tmp_path, monkeypatch):
    shutil.copytree(bundles("fp32"), tmp_path / "bundles" / "tiny-fp32")    # what make demo leaves
    monkeypatch.chdir(tmp_path)
    first = SERVING.split("```bash\n", 1)[1].split("```", 1)[0]
    exports = [(line, argv) for line, cmd, argv in _dysink_commands(f"```bash\n{first}```")
               if line.startswith("dysink-export")]
    assert exports, first
    for line, argv in exports:
        res = CliRunner().invoke(export_main, shlex.split(line)[1:])
        assert res.exit_code == 0, (line, res.output)
