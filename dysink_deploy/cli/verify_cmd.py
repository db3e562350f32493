"""`dysink-export verify-checkpoint` (to be written)."""

import click


@click.command("verify-checkpoint")
def verify_checkpoint():
    """Not implemented yet."""
    raise click.ClickException("not implemented yet")
