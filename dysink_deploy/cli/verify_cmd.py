"""`dysink-export verify-checkpoint`: check checkpoint files against a model preset.

The model is built on the meta device: parameters have names and shapes but
no storage, so even the 1.3B preset costs no weight memory and builds in
about a second. Files are memory-mapped and only their keys and shapes are
read, so a multi-GB checkpoint is checked without reading its tensor data.

Every key problem of every given file goes into ONE list (not just the first
one, which is all `build_models` can say when it refuses a file), followed by
a summary line per component and PASSED / FAILED. Exit codes: 0 all match,
1 some key problem, 2 a user error (missing or unreadable file, no file given:
a `DysinkError`, printed as one line by the `dysink-export` group).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import DysinkError
from .common import checkpoint_file_options, model_config_option, resolve_model, shared


_MAX_LINES = 20   # problems and warnings listed per kind; the rest counted


def _build_on_meta(cfg):
    import torch                                   # lazy: torch (dysink-export starts without it)

    from ..models.factory import DySinkModels     # lazy: torch
    with torch.device("meta"):
        return DySinkModels(cfg)


def _non_finite(state_dict, file: str) -> list[str]:
    """One line per floating tensor holding NaN or Inf (a file that would stream black frames)."""
    import torch                                   # lazy: torch

    lines = []
    for key, t in state_dict.items():
        if torch.is_tensor(t) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                lines.append(f"{file}: {key}: {bad} of {t.numel()} values are NaN or Inf")
    return lines


@click.command("verify-checkpoint")
@shared("--model", "model_name", default=None, note="The files must fit it (or --model-config).")
@model_config_option
@checkpoint_file_options
@shared("--use-ema", is_flag=True)
def verify_checkpoint(model_name, model_config, checkpoint, lora, vae, pe, use_ema):
    """List every missing, unexpected or mis-shaped key of the given checkpoint files.

    Nothing is loaded into memory or written. Exit 0 when every file fits
    --model, 1 when any key problem is found, 2 when a file cannot be read.
    """
    if not any((checkpoint, lora, vae, pe)):
        raise DysinkError("verify-checkpoint needs at least one file: --checkpoint, --lora, --vae or --pe")
    if use_ema and not checkpoint:
        raise DysinkError("--use-ema selects the weights inside --checkpoint; give --checkpoint too")
    try:
        from .. import checkpoints as ck           # lazy: torch (this command needs it; the others do not)
    except ImportError:
        raise DysinkError("verify-checkpoint reads checkpoints with PyTorch: pip install 'dysink-deploy[torch]'") \
            from None
    cfg = resolve_model(model_name, model_config)
    model_name = cfg.name
    models = _build_on_meta(cfg)

    # Read everything before printing anything: an unreadable file is a user
    # error (exit 2) and must not leave a half-printed report behind.
    reports: list[tuple[str, object]] = []  # (file, KeyReport | LoraReport)
    non_finite: list[str] = []              # values are read (memory-mapped) only for this scan
    unreadable: list[str] = []              # every file that cannot be read, not only the first

    def attempt(fn):
        try:
            fn()
        except ck.CheckpointError as exc:
            unreadable.append(str(exc))

    def check_dit():
        what = "DiT (generator_ema)" if use_ema else "DiT"
        sd = ck.dit_state_dict(checkpoint, use_ema)
        reports.append((checkpoint, ck.compare_keys(models.dit, sd, what)))
        non_finite.extend(_non_finite(sd, Path(checkpoint).name))

    def check_lora():
        # Checked against the preset's DiT shapes, so it works with or without --checkpoint.
        pairs, bad = ck.read_lora(lora)
        shapes = {k: tuple(v.shape) for k, v in models.dit.state_dict().items()}
        reports.append((lora, ck.check_lora(pairs, bad, shapes, cfg.dit.lora_rank, ck.lora_targets(models.dit))))

    def check_part(path, loader, module, what):
        def run():
            sd = loader(path)
            reports.append((path, ck.compare_keys(module, sd, what)))
            non_finite.extend(_non_finite(sd, Path(path).name))
        return run

    if checkpoint:
        attempt(check_dit)
    if lora:
        attempt(check_lora)
    if vae:
        attempt(check_part(vae, ck.vae_state_dict, models.vae, "VAE decoder"))
    if pe:
        attempt(check_part(pe, ck.pe_state_dict, models.pe, "PE-Core encoder"))
    if unreadable:
        if len(unreadable) == 1:
            raise DysinkError(unreadable[0])
        raise DysinkError(f"{len(unreadable)} files cannot be read: " + " | ".join(unreadable))

    problems = [line for _, report in reports for line in report.lines()] + non_finite
    warnings = [line for _, report in reports for line in getattr(report, "warning_lines", list)()]
    click.echo(f"verify-checkpoint: model {model_name!r} (LoRA rank {cfg.dit.lora_rank}, "
               f"alpha {cfg.dit.lora_alpha:g})")
    # The verdict per file first; details after, capped (a wrong file can have a thousand lines).
    click.echo("summary:")
    for path, report in reports:
        click.echo(f"  {'ok  ' if report.ok else 'BAD '} {report.summary()}  [{Path(path).name}]")
    for title, lines in ((f"{len(problems)} problems", problems), (f"{len(warnings)} warnings", warnings)):
        if not lines:
            continue
        click.echo(f"{title}{' (first ' + str(_MAX_LINES) + ')' if len(lines) > _MAX_LINES else ''}:")
        for line in lines[:_MAX_LINES]:
            click.echo(f"  {line}")
        if len(lines) > _MAX_LINES:
            click.echo(f"  ... and {len(lines) - _MAX_LINES} more")
    if problems:
        click.echo(f"FAILED: {len(problems)} key problems in "
                   f"{sum(not r.ok for _, r in reports)} of {len(reports)} files")
        sys.exit(1)
    click.echo(f"PASSED: {len(reports)} files match model {model_name!r}")
