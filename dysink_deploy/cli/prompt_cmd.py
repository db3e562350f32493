"""`dysink-export encode-prompt`: a prompt -> umT5 embeddings in a .safetensors file (what
`dysink-run --prompt-embeds` and `--prompts` schedules take)."""

from __future__ import annotations

import os
import shlex
import sys
import time

import click

from ..atomic import write_atomic
from ..errors import DysinkError
from ..runtime.prompts import encode_with_torch
from .common import shared


def text_encoder_options(func):
    """--tokenizer / --text-encoder / --text-encoder-preset, the same for every command that encodes prompts."""
    for option in reversed([
        shared("--tokenizer", type=click.Path(), default=None),
        shared("--text-encoder", type=click.Path(), default=None,
               default_text="random weights of --text-encoder-preset"),
        shared("--text-encoder-preset", type=click.Choice(["umt5-xxl", "tiny"]), default=None,
               default_text="umt5-xxl with --text-encoder, else tiny"),
    ]):
        func = option(func)
    return func


@click.command("encode-prompt")
@shared("--prompt", required=True)
@text_encoder_options
@click.option("--out", required=True, type=click.Path(), help="The .safetensors file to write.")
@shared("--overwrite", is_flag=True)
def encode_prompt_command(prompt, tokenizer, text_encoder, text_encoder_preset, out, overwrite):
    """Encode a prompt with the umT5-XXL encoder as the reference does, into OUT.safetensors."""
    t0 = time.perf_counter()
    if not out.endswith(".safetensors"):
        raise DysinkError(f"--out {out!r} must end in .safetensors")
    if os.path.islink(out):
        raise DysinkError(f"--out {out!r} is a symbolic link; give a plain file path")
    if os.path.exists(out) and not overwrite:
        raise DysinkError(f"--out {out!r} exists; pass --overwrite or choose another file")
    emb = encode_with_torch(prompt, tokenizer, text_encoder, text_encoder_preset)
    from safetensors.numpy import save

    write_atomic(out, save({"prompt_embeds": emb}))
    click.echo(f"wrote {out} ({emb.shape[0]} x {emb.shape[1]}, float32)")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")
