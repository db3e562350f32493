"""`dysink-export encode-prompt`: a prompt -> umT5 embeddings in a .safetensors file (what
`dysink-run --prompt-embeds` and `--prompts` schedules take)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
import time

import click

from ..atomic import check_output_file, write_atomic
from ..errors import DysinkError
from ..runtime.prompts import encode_with_torch
from .common import shared


# Written into every embeddings file's safetensors metadata: how --overwrite knows the file is ours.
EMBEDS_METADATA = {"format": "dysink-prompt-embeds", "writer": "dysink-export encode-prompt"}


def embeddings_file_problem(path: str) -> str | None:
    """None when `path` is an embeddings file this command writes: a safetensors header holding one
    float32 2-D tensor `prompt_embeds` and our metadata (or none: files of earlier versions);
    otherwise what it is instead."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= min(1 << 20, os.fstat(fh.fileno()).st_size - 8):
                return "no safetensors header"
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        return f"no safetensors header: {getattr(exc, 'strerror', None) or exc}"
    if not isinstance(header, dict):
        return "no safetensors header"
    meta = header.pop("__metadata__", None)
    if meta is not None and meta != EMBEDS_METADATA:
        return f"safetensors metadata of another writer: {json.dumps(meta)[:80]}"
    emb = header.get("prompt_embeds")
    if (set(header) != {"prompt_embeds"} or not isinstance(emb, dict) or emb.get("dtype") != "F32"
            or not isinstance(emb.get("shape"), list) or len(emb["shape"]) != 2):
        return f"tensors {', '.join(sorted(header))[:80] or 'none'}, not one float32 [tokens, width] prompt_embeds"
    return None


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
    check_output_file(out, "--out")         # not a directory, not under a file, a writable folder
    if os.path.exists(out) and not overwrite:
        raise DysinkError(f"--out {out!r} exists; pass --overwrite or choose another file")
    if os.path.exists(out) and (problem := embeddings_file_problem(out)):
        raise DysinkError(f"--out {out!r} is not an embeddings file dysink wrote ({problem}); --overwrite replaces "
                          "only those, nothing was touched: choose another file")
    emb = encode_with_torch(prompt, tokenizer, text_encoder, text_encoder_preset)
    from safetensors.numpy import save

    try:
        write_atomic(out, save({"prompt_embeds": emb}, metadata=EMBEDS_METADATA))
    except OSError as exc:
        hint = "; free some space and run it again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise DysinkError(f"{exc.strerror or exc} writing --out {out!r}: nothing was written, an earlier file there is "
                          f"as it was{hint}") from None
    click.echo(f"wrote {out} ({emb.shape[0]} x {emb.shape[1]}, float32)")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")
