"""From a prompt to umT5 token ids, without torch: the reference pipeline's cleaning and tokenizer.

The reference (Wan's HuggingfaceTokenizer with clean='whitespace', seq_len=512, through
transformers' AutoTokenizer on the release's `google/umt5-xxl` folder) does:
  1. cleaning: ftfy.fix_text, html.unescape twice, strip; then every run of whitespace -> one
     space, strip;
  2. tokenizing with special tokens (umT5 appends </s>), truncating to 512 tokens (the </s> kept),
     padding with <pad> to 512; the mask is 1 on tokens, 0 on padding.
Here the same tokenizer file (`tokenizer.json`) runs in the Hugging Face `tokenizers` library, which
is what transformers' fast tokenizer runs underneath (tests/test_text.py compares with transformers
on a tokenizer trained in the test).
"""

from __future__ import annotations

import html
import os
import re

import numpy as np

from .errors import DysinkError

SEQ_LEN = 512


def clean_prompt(text: str) -> str:
    """The reference's 'whitespace' cleaning."""
    try:
        import ftfy
    except ImportError:
        raise DysinkError("prompts need ftfy and tokenizers: pip install 'dysink-deploy[text]'") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """`tokenizer.json` of a umT5 tokenizer folder -> (ids int64 [seq_len], mask int64 [seq_len])."""

    def __init__(self, folder: str | os.PathLike, seq_len: int = SEQ_LEN):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DysinkError("prompts need ftfy and tokenizers: pip install 'dysink-deploy[text]'") from None
        folder = os.fspath(folder)
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isdir(folder):
            raise DysinkError(f"--tokenizer {folder!r} is not a folder; give the release's google/umt5-xxl folder")
        if not os.path.isfile(path):
            raise DysinkError(f"--tokenizer {folder!r} has no tokenizer.json; give the release's google/umt5-xxl "
                              "folder (it holds tokenizer.json, spiece.model and the configs)")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 (the library raises plain Exceptions)
            raise DysinkError(f"cannot read {path!r} as a tokenizer ({str(exc).splitlines()[0][:160]})") from None
        pad = self.tokenizer.token_to_id("<pad>")
        if pad is None or self.tokenizer.token_to_id("</s>") is None:
            raise DysinkError(f"{path!r} has no <pad> or </s> token: not a umT5 tokenizer")
        self.seq_len = seq_len
        self.tokenizer.enable_truncation(seq_len)
        self.tokenizer.enable_padding(length=seq_len, pad_id=pad, pad_token="<pad>")

    def __call__(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise DysinkError("the prompt is empty; give some text")
        enc = self.tokenizer.encode(clean_prompt(prompt), add_special_tokens=True)
        return np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.attention_mask, dtype=np.int64)
