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


class UserErrorGroup(click.Group):
    """A click group whose commands print a `DysinkError` as `error: ...` and exit 2, no traceback;
    SIGTERM / SIGHUP stop them like Ctrl-C (cleanup runs), exiting 128 + the signal."""

    def invoke(self, ctx):
        install_stop_signals()
        try:
            return super().invoke(ctx)
        except DysinkError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted ({exc.args[0] if exc.args else 'SIGINT'}); nothing partial was left", err=True)
            sys.exit(exit_code(exc))


def checkpoint_file_options(func):
    """--checkpoint / --lora / --vae / --pe, the same four files for every command that takes weights."""
    for option in reversed([
        click.option("--checkpoint", type=click.Path(), default=None, help="DiT base: stage1_base.pt or .safetensors."),
        click.option("--lora", type=click.Path(), default=None, help="stage2_lora.pt, merged into the DiT."),
        click.option("--vae", type=click.Path(), default=None, help="Wan2.1_VAE.pth (its decoder is used)."),
        click.option("--pe", type=click.Path(), default=None, help="PE-Core-S16-384.pt."),
    ]):
        func = option(func)
    return func


def model_config_option(func):
    """--model-config FILE.json: any ModelConfig (its to_dict) or a bundle.json, instead of --model."""
    return click.option("--model-config", "model_config", type=click.Path(), default=None,
                        help="JSON file of a model configuration (a ModelConfig's fields, or a bundle.json "
                             "whose model is used) instead of --model.")(func)


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
