"""Help texts that say what the command does (issue 23): one precision default, threads that name
only the libraries a command runs, what `bench memory` judges, one spelling of switch defaults."""

from __future__ import annotations

import click
from click.testing import CliRunner

from dysink_deploy.cli.bench_cli import main as bench_main
from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.runtime.cli import main as run_main


def _option(cmd: click.Command, name: str) -> click.Option:
    return next(p for p in cmd.params if isinstance(p, click.Option) and name in p.opts)


def test_precision_default_is_the_same_for_plan_onnx_and_run():
    defaults = {"plan": _option(export_main.commands["plan"], "--precision").default,
                "onnx": _option(export_main.commands["onnx"], "--precision").default,
                "dysink-run": _option(run_main, "--precision").default}
    assert len(set(defaults.values())) == 1, defaults


def test_threads_name_the_libraries_the_command_runs():
    served = _option(export_main.commands["triton-repo"], "--threads").help
    assert "torch" not in served.replace("runs no torch", ""), served          # the served model is onnxruntime only
    assert "onnxruntime" in served
    assert "torch" not in _option(bench_main.commands["serve"], "--threads").help
    assert "torch and onnxruntime" in _option(run_main, "--threads").help


def test_bench_memory_says_it_judges_the_trimmed_rss():
    memory = bench_main.commands["memory"]
    for name in ("--tolerance", "--measure-block"):
        text = _option(memory, name).help
        assert "malloc_trim" in text and "peak-RSS growth" not in text, text
    assert "peak RSS" in _option(bench_main.commands["soak"], "--tolerance").help   # soak judges the peak
    assert "Block at which peak RSS" not in _option(memory, "--measure-block").help


def test_switch_defaults_are_spelled_one_way():
    """onnx (default None: given or not) and plugins (default True) show the same default text, written
    by the project, not click's bare 'sink-kv-bf16' or 'true'."""
    texts = {}
    for cmd in ("onnx", "plugins"):
        opt = _option(export_main.commands[cmd], "--sink-kv-bf16")
        assert not opt.show_default, cmd
        texts[cmd] = opt.help.rsplit("[default: ", 1)[-1].rstrip("]")
    assert texts == {"onnx": "--sink-kv-bf16", "plugins": "--sink-kv-bf16"}, texts
    res = CliRunner().invoke(export_main, ["plugins", "--help"])
    assert "[default: sink-kv-bf16]" not in res.output.replace("\n", " ")
