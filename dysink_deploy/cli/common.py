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
