"""`dysink-run`: stream a DySink video into a directory.

Flags only: they fill a `RunSpec` (runtime/spec.py: validation, defaults and help texts), the
stream comes from `builder.open_streamer`, the directory from `run.stream_to_dir`. User errors
print one line (`error: ...`) and exit 2; Ctrl-C keeps what was written and exits 130.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

import click

from ..cli.common import (OneLineCommand, checkpoint_file_options, flag_names, model_config_option,
                          preset_default_text, shared, spec_option, version_option)
from ..cli.prompt_cmd import text_encoder_options
from ..config import EVICTION_RULES, FEATURE_MODES, StreamConfig
from ..errors import DysinkError
from ..signals import StopHold, exit_code, install_stop_signals
from .builder import open_streamer, resolve_run
from .dump import BlockDumper, check_dump_dir
from .prompts import check_switches
from .report import format_summary, summarize
from .run import check_out_dir, open_out_dir, stream_to_dir
from .spec import DEFAULT_BLOCKS, RunSpec, spec_choices, spec_default

_DEFAULT = StreamConfig()
# Stream settings that are flags of dysink-run (the others come with --config).
STREAM_FLAGS = ("top_k", "local_attn_size", "sink_size", "gate_threshold", "dedup_threshold", "bank_capacity",
                "eviction", "feature_mode", "height", "width")
# Flags that are not RunSpec fields: where the run goes and how it reports.
_OUTPUT_FLAGS = ("out", "overwrite", "quiet", "dump_block")


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class _RunCommand(OneLineCommand):
    """dysink-run's command: started as the process's own command line (`args` None, as the console
    script and `python -m` do), the stop signals stay held until the process is gone once the run has
    begun to stop; called in process (`main.main(args)`, click's test runner) they are restored."""

    def main(self, args=None, *rest, **kw):
        self.own_process = args is None
        return super().main(args, *rest, **kw)


@click.command(cls=_RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
@shared("--model", "model", default=None, default_text="tiny; with --bundle: the bundle's")
@model_config_option
@spec_option("backend")
@shared("--bundle", type=click.Path(), default=None,
        note="For --backend onnxruntime / tensorrt (onnxruntime when --backend is not given); it fixes model, "
             "weights, precision and the stream settings baked into its graphs.")
@shared("--ort-provider", type=click.Choice(spec_choices("ort_provider")), default=spec_default("ort_provider"))
@shared("--blocks", type=int, default=None, default_text=str(DEFAULT_BLOCKS))
@spec_option("seconds", type=float)
@shared("--seed", type=int, default=spec_default("seed"))
@click.option("--out", required=True, type=click.Path(), help="Output directory (video.mp4, stats.json, timeline.png).")
@shared("--overwrite", is_flag=True)
@spec_option("prompts", type=click.Path())
@shared("--prompt", "prompt", default=None, note="Needs --tokenizer; real weights need --text-encoder.")
@text_encoder_options
@spec_option("prompt_embeds", type=click.Path())
@checkpoint_file_options
@shared("--use-ema", is_flag=True)
@shared("--weights-seed", type=int, default=spec_default("weights_seed"))
@spec_option("device", type=str)
@shared("--precision", type=click.Choice(spec_choices("precision")), default=spec_default("precision"),
        note="torch backend.")
@spec_option("kernels")
@spec_option("kv_cache_dtype", default_text="auto; with --bundle: the bundle's")
@spec_option("bank_placement", default_text="device; with --bundle: the bundle's")
@shared("--threads", type=int, default=None, note="Used by torch and onnxruntime.", default_text="all cores")
@spec_option("config_file", type=click.Path())
@shared("--top-k", type=int, default=None, default_text=str(_DEFAULT.top_k))
@shared("--local-attn-size", type=int, default=None, default_text=str(_DEFAULT.local_attn_size))
@shared("--sink-size", type=int, default=None, default_text=str(_DEFAULT.sink_size))
@shared("--gate-threshold", type=float, default=None, default_text=str(_DEFAULT.gate_threshold))
@shared("--dedup-threshold", type=float, default=None,
        default_text=f"{_DEFAULT.dedup_threshold}, the release's; with --bundle: the bundle's")
@shared("--bank-capacity", type=int, default=None, default_text=str(_DEFAULT.bank_capacity))
@click.option("--eviction", type=click.Choice(EVICTION_RULES), default=None,
              help="Which entry leaves a full bank: least recently retrieved, or oldest. [default: lru]")
@shared("--feature-mode", type=click.Choice(FEATURE_MODES), default=None, default_text=_DEFAULT.feature_mode)
@shared("--height", type=int, default=None, default_text=preset_default_text("height"))
@shared("--width", type=int, default=None, default_text=preset_default_text("width"))
@spec_option("cuda_graph", is_flag=True)
@shared("--pipeline/--no-pipeline", "pipeline", default=None)
@shared("--quiet", is_flag=True)
@click.option("--dump-block", type=(int, click.Path()), default=None, metavar="N DIR",
              help="Save block N's dit_step inputs and outputs as .npy into DIR (for the C++ embedding example).")
def main(**kw):
    """Stream a DySink video block by block into --out (video.mp4, stats.json, timeline.png)."""
    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in ["dysink-run", *sys.argv[1:]])
    ctx = click.get_current_context()
    kw["_given"] = {name for name in kw
                    if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    install_stop_signals()
    hold = StopHold()       # armed by stream_to_dir for its block loop: the report below is not cut
    try:
        _report(kw, hold, started, command)
    finally:
        if hold.holding and getattr(ctx.command, "own_process", False):
            hold.ignore_until_exit()        # nor is the exit: a signal now would print a traceback from atexit
        else:
            hold.end()


def _report(kw: dict, hold: StopHold, started: float, command: str) -> None:
    try:
        result = run_cli(kw, hold)
    except DysinkError as exc:
        click.echo(f"error: {flag_names(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:        # stopped before the stream began: nothing was written
        click.echo(f"interrupted before the first block ({exc.args[0] if exc.args else 'SIGINT'})", err=True)
        sys.exit(exit_code(exc))
    runtime = time.perf_counter() - started
    if result.stats.get("blocks"):           # the run in figures (stats.json's summary), then the verdict
        for line in format_summary(summarize(result.stats["blocks"], {"wall_s": round(result.seconds, 3)})):
            click.echo(line)
    status = "INTERRUPTED" if result.interrupted else "DONE"
    click.echo(f"{status} | {_n(result.blocks, 'block')}, {_n(result.frames, 'frame')} -> {result.out} | "
               f"Runtime: {runtime:.1f}s | Command: {command}")
    if result.interrupted:
        sys.exit(result.exit_code or 130)


def spec_from_flags(kw: dict, given: set) -> RunSpec:
    """The RunSpec of dysink-run's flags (`given`: the flags the user typed)."""
    fields = {k: v for k, v in kw.items() if k not in STREAM_FLAGS and k not in _OUTPUT_FLAGS}
    if fields.get("bundle") and "backend" not in given:     # as api.open_stream: a bundle streams on onnxruntime
        fields["backend"] = "onnxruntime"
    settings = {n: kw[n] for n in STREAM_FLAGS if kw.get(n) is not None}
    return RunSpec(**fields, settings=settings, explicit=frozenset(given))


def run_cli(kw: dict, hold: StopHold | None = None):
    given = kw.pop("_given", set())
    spec = spec_from_flags(kw, given)
    # Build the stream before creating --out: weights, a provider or a precision this machine cannot
    # run fail before anything is written.
    check_out_dir(kw["out"], kw["overwrite"])
    if kw["dump_block"]:
        check_dump_dir(kw["dump_block"][1])      # a file, a link, a full folder: before the stream is built
    run = resolve_run(spec)
    if spec.blocks is None and spec.seconds is None:      # the default length: a switch past it would never apply
        check_switches([frame for frame, _ in run.switches], run.stream.block_frames, run.blocks)
    streamer, run_config = open_streamer(spec, resolved=run)
    blocks = run.blocks
    if kw["dump_block"]:
        block, dump_dir = kw["dump_block"]
        if not 0 <= block < blocks:
            raise DysinkError(f"--dump-block {block}: the run has only {blocks} blocks (0..{blocks - 1})")
        streamer.backend = BlockDumper(streamer.backend, block, dump_dir, len(streamer.cfg.timesteps()),
                                       streamer.dit.freq_dim, run_config["precision"])
        run_config["dump_block"] = {"block": block, "dir": os.path.abspath(dump_dir)}
    lock = open_out_dir(kw["out"], kw["overwrite"])
    try:
        return stream_to_dir(streamer, run.model, run.stream, blocks, os.path.abspath(kw["out"]),
                             run_config, progress=not kw["quiet"], hold=hold)
    finally:
        lock.close()


if __name__ == "__main__":
    main()
