"""What every dysink CLI shares: one exception type printed as one line."""

from __future__ import annotations

import sys

import click

from ..errors import DysinkError


class UserErrorGroup(click.Group):
    """A click group whose commands print a `DysinkError` as `error: ...` and exit 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DysinkError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


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
