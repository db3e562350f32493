"""What every dysink CLI shares: one exception type printed as one line."""

from __future__ import annotations

import re
import sys

import click

from .. import __version__
from ..config import MODEL_PRESETS, model_config_from_file, model_preset
from ..errors import DysinkError
from ..limits import MAX_THREADS
from ..runtime.spec import flag_of, spec_choices, spec_default, spec_help
from ..signals import exit_code, install_stop_signals


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


def _with_version(cmd: click.Command) -> click.Command:
    if not any("--version" in getattr(p, "opts", ()) for p in cmd.params):
        version_option(cmd)
    return cmd


class OneLineCommand(click.Command):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        return _one_line_main(super().main, args, prog_name, complete_var, standalone_mode, extra)


class UserErrorGroup(click.Group):
    """A click group whose commands print a `DysinkError` as `error: ...` and exit 2, no traceback;
    SIGTERM / SIGHUP stop them like Ctrl-C (cleanup runs), exiting 128 + the signal; click's usage
    errors are one line too (OneLineCommand)."""

    command_class = OneLineCommand

    def add_command(self, cmd, name=None):
        super().add_command(_with_version(cmd), name)      # --version on every subcommand too

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
    if model_name is not None and model_config is not None:
        raise DysinkError("give --model or --model-config, not both")
    if model_config is not None:
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
# Options that are RunSpec fields take their help from it (runtime/spec.py: the one source).
_SPEC_OPTIONS = ("model", "model_config", "precision", "bundle", "blocks", "seed", "weights_seed", "use_ema",
                 "threads", "ort_provider", "checkpoint", "lora", "vae", "pe", "tokenizer", "text_encoder",
                 "text_encoder_preset", "prompt", "kv_cache_dtype", "bank_placement", "pipeline")
HELP = {
    **{flag_of(name): spec_help(name) for name in _SPEC_OPTIONS},
    # Which libraries' threads: a note per command (the served model runs onnxruntime only).
    "--threads": f"CPU threads, 1..{MAX_THREADS} (pin it on a busy machine).",
    "--overwrite": "Replace what --out already holds (only this project's own outputs).",
    "--dedup-threshold": "Bank dedup: a block whose feature has cosine above this with a bank entry is not "
                         "stored.",
    "--bank-capacity": "Memory-bank entries kept on the device.",
    "--height": "Video height in pixels.",
    "--width": "Video width in pixels.",
    "--feature-mode": "Bank feature from a block-alone decode (the reference's way) or the streamed frames.",
    "--graph": "Only this graph (repeatable; default: all).",
    "--arch": "Compute capabilities x 10, comma-separated.",
    "--tolerance": "Allowed growth of the judged RSS between the measure block and the end.",
    "--measure-block": "Block at which the judged RSS is first measured.",
    "--markdown": "Also write the table to this Markdown file.",
    "--top-k": "Retrieved sinks per block.",
    "--local-attn-size": "Local window in latent frames, the current block included.",
    "--sink-size": "Fixed sink frames (LongLive's frame sink; 0 in DySink's release).",
    "--gate-threshold": "Sink anomaly gate: a sink is dropped where more than this fraction of heads prefer it.",
    "--sink-kv-bf16": "Round retrieved sink K/V to bf16 like the reference.",
    "--quiet": "No progress bar.",
    "--mid": "A mid-size model: 4 DiT layers at the 1.3B width, the real VAE and PE-Core configs, 128x128 "
             "(random weights).",
    "--version": "Show the version and exit.",
}


def version_option(func):
    """--version on every command: the project's version, and Python's."""
    return click.version_option(__version__, "--version", help=HELP["--version"],
                                message=f"%(prog)s (dysink-deploy) %(version)s, Python {sys.version.split()[0]}")(func)


def shared(*decls: str, default_text: str | None = None, note: str | None = None, **kw):
    """click.option for a shared option (first declaration is its name in HELP)."""
    name = decls[0].split("/")[0]
    text = HELP[name]
    if name == "--model":
        text = f"{text}: {', '.join(sorted(MODEL_PRESETS))}."
        kw.setdefault("type", click.Choice(sorted(MODEL_PRESETS)))
    if note:
        text = f"{text} {note}"
    if default_text is None and "/" in decls[0] and isinstance(kw.get("default"), bool):
        default_text = switch_default(decls[0], kw["default"])
    if default_text is not None:
        text = f"{text} [default: {default_text}]"
    elif "default" in kw and kw["default"] is not None and not kw.get("is_flag") and "show_default" not in kw:
        kw["show_default"] = True
    return click.option(*decls, help=text, **kw)


def switch_default(decl: str, value: bool) -> str:
    """The one spelling of a --x/--no-x switch's default in help texts: the flag that is on by default
    ('--sink-kv-bf16' or '--no-sink-kv-bf16'), never 'true' or click's bare 'sink-kv-bf16'."""
    on, _, off = decl.partition("/")
    return on if value else (off or "--no-" + on[2:])


def preset_default_text(field: str) -> str:
    """'the preset's: 64 for tiny, 480 for wan2.1-t2v-1.3b' for height / width, from the presets."""
    return "the preset's: " + ", ".join(f"{getattr(m, field)} for {n}" for n, m in sorted(MODEL_PRESETS.items()))


def spec_option(name: str, *decls: str, default_text: str | None = None, **kw):
    """click.option for a RunSpec field: flag, default, help and choices read from the field."""
    text = spec_help(name)
    if default_text is not None:
        text = f"{text} [default: {default_text}]"
    kw.setdefault("default", spec_default(name))
    try:
        kw.setdefault("type", click.Choice(spec_choices(name)))
    except KeyError:
        pass
    if kw["default"] is not None and not kw.get("is_flag") and default_text is None:
        kw.setdefault("show_default", True)
    return click.option(*(decls or (flag_of(name), name)), help=text, **kw)


def flag_names(message: str) -> str:
    """Config messages name dataclass fields (StreamConfig.dedup_threshold, RunSpec.seed); on the
    command line the user typed flags: say --dedup-threshold, --seed."""
    return re.sub(r"(?:StreamConfig|RunSpec)\.([a-z_0-9]+)", lambda m: flag_of(m.group(1)), message)
