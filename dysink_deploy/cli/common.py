"""What every dysink CLI shares: one exception type printed as one line."""

from __future__ import annotations

import contextlib
import signal
import sys

import click

from ..errors import DysinkError


class StopSignal(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised where the program is, so that they stop it the way Ctrl-C does:
    `finally` blocks run (partial exports removed, the video closed, stats written)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, frame):
    raise StopSignal(signum)


def install_stop_signals() -> None:
    """Make SIGTERM and SIGHUP behave like SIGINT (main thread only; a no-op elsewhere)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _raise_stop)
        except ValueError:      # not the main thread
            pass


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C / SIGTERM / SIGHUP until the block is left (then they act as usual): for steps
    that must not be cut in half, like writing a block's frames and its stats entry."""
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    except (AttributeError, ValueError, OSError):     # not the main thread / no pthreads
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, StopSignal) else signal.SIGINT)


def _one_line_main(run, args, prog_name, complete_var, standalone_mode, extra):
    """click's own usage errors (a bad choice, a missing option, a wrong type) as one `error:` line,
    like every other refusal of the project, exit 2."""
    if not standalone_mode:
        return run(args, prog_name, complete_var, standalone_mode=False, **extra)
    try:
        result = run(args, prog_name, complete_var, standalone_mode=False, **extra)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "the command")
        click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


class OneLineCommand(click.Command):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        return _one_line_main(super().main, args, prog_name, complete_var, standalone_mode, extra)


class UserErrorGroup(click.Group):
    """A click group whose commands print a `DysinkError` as `error: ...` and exit 2, no traceback;
    SIGTERM / SIGHUP stop them like Ctrl-C (cleanup runs), exiting 128 + the signal; click's usage
    errors are one line too (OneLineCommand)."""

    command_class = OneLineCommand

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        return _one_line_main(super().main, args, prog_name, complete_var, standalone_mode, extra)

    def invoke(self, ctx):
        install_stop_signals()
        try:
            return super().invoke(ctx)
        except DysinkError as exc:
            click.echo(f"error: {flag_names(str(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}); nothing partial was left", err=True)
            sys.exit(exit_code(exc))


def checkpoint_file_options(func):
    """--checkpoint / --lora / --vae / --pe, the same four files for every command that takes weights."""
    for option in reversed([shared(name, type=click.Path(), default=None)
                            for name in ("--checkpoint", "--lora", "--vae", "--pe")]):
        func = option(func)
    return func


def model_config_option(func):
    """--model-config FILE.json: any ModelConfig (its to_dict) or a bundle.json, instead of --model."""
    return shared("--model-config", "model_config", type=click.Path(), default=None)(func)


def resolve_model(model_name: str | None, model_config: str | None, default: str | None = None):
    """The ModelConfig of --model NAME or --model-config FILE (exactly one, or `default`)."""
    from ..config import model_preset

    if model_name is not None and model_config is not None:
        raise DysinkError("give --model or --model-config, not both")
    if model_config is not None:
        from ..config import model_config_from_file

        return model_config_from_file(model_config)
    if model_name is None:
        if default is None:
            raise DysinkError("give --model PRESET or --model-config FILE.json")
        model_name = default
    return model_preset(model_name)


# One vocabulary across dysink-run, dysink-export and dysink-bench: an option that several commands
# take is declared through `shared`, so its name, meaning and help text are the same everywhere
# (tests/cli/test_vocabulary.py walks every command and checks). Defaults are shown one way,
# "[default: X]": click's show_default where the default is a value, `default_text` where it
# depends on something else (the preset, the bundle).
HELP = {
    "--model": "Model preset",
    "--model-config": "JSON file of a model configuration (a ModelConfig's fields, or a bundle.json whose "
                      "model is used) instead of --model.",
    "--precision": "Model precision.",
    "--bundle": "Bundle directory (from dysink-export onnx).",
    "--overwrite": "Replace what --out already holds (only this project's own outputs).",
    "--blocks": "Blocks to generate, 3 latent frames each (block 0 gives 9 video frames, later ones 12).",
    "--seed": "Noise seed of the stream.",
    "--weights-seed": "Seed of the random weights used where no checkpoint is given.",
    "--use-ema": "Use generator_ema instead of generator from the DiT checkpoint.",
    "--threads": "CPU threads for torch and onnxruntime (pin it on a busy machine).",
    "--dedup-threshold": "Bank dedup: a block whose feature has cosine above this with a bank entry is not "
                         "stored.",
    "--bank-capacity": "Memory-bank entries kept on the device.",
    "--height": "Video height in pixels.",
    "--width": "Video width in pixels.",
    "--feature-mode": "Bank feature from a block-alone decode (the reference's way) or the streamed frames.",
    "--graph": "Only this graph (repeatable; default: all).",
    "--arch": "Compute capabilities x 10, comma-separated.",
    "--ort-provider": "onnxruntime execution provider (cuda / tensorrt need onnxruntime-gpu).",
    "--tolerance": "Allowed peak-RSS growth between the measure block and the end.",
    "--measure-block": "Block at which peak RSS is first measured.",
    "--markdown": "Also write the table to this Markdown file.",
    "--top-k": "Retrieved sinks per block.",
    "--local-attn-size": "Local window in latent frames, the current block included.",
    "--sink-size": "Fixed sink frames (LongLive's frame sink; 0 in DySink's release).",
    "--gate-threshold": "Sink anomaly gate: a sink is dropped where more than this fraction of heads prefer it.",
    "--sink-kv-bf16": "Round retrieved sink K/V to bf16 like the reference.",
    "--quiet": "No progress bar.",
    "--checkpoint": "DiT base: stage1_base.pt or .safetensors.",
    "--lora": "stage2_lora.pt, merged into the DiT.",
    "--vae": "Wan2.1_VAE.pth (its decoder is used).",
    "--pe": "PE-Core-S16-384.pt.",
    "--tokenizer": "The release's google/umt5-xxl folder (tokenizer.json).",
    "--text-encoder": "models_t5_umt5-xxl-enc-bf16.pth.",
    "--text-encoder-preset": "umT5 encoder architecture.",
    "--prompt": "The text prompt (cleaned and tokenized as the reference does).",
}


def shared(*decls: str, default_text: str | None = None, note: str | None = None, **kw):
    """click.option for a shared option (first declaration is its name in HELP)."""
    name = decls[0].split("/")[0]
    text = HELP[name]
    if name == "--model":
        from ..config import MODEL_PRESETS

        text = f"{text}: {', '.join(sorted(MODEL_PRESETS))}."
        kw.setdefault("type", click.Choice(sorted(MODEL_PRESETS)))
    if note:
        text = f"{text} {note}"
    if default_text is not None:
        text = f"{text} [default: {default_text}]"
    elif "default" in kw and kw["default"] is not None and not kw.get("is_flag") and "show_default" not in kw:
        kw["show_default"] = True
    return click.option(*decls, help=text, **kw)


def flag_names(message: str) -> str:
    """Config messages name dataclass fields (StreamConfig.dedup_threshold); on the command line the
    user typed flags: say --dedup-threshold."""
    import re

    return re.sub(r"StreamConfig\.([a-z_0-9]+)", lambda m: "--" + m.group(1).replace("_", "-"), message)
