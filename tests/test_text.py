"""Prompt cleaning and tokenizing (torch-free) against transformers' tokenizer on the same files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("ftfy")

from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.models.umt5 import encode_prompt  # noqa: E402
from dysink_deploy.text import PromptTokenizer, clean_prompt  # noqa: E402

PROMPTS = ["a cat walks on the beach", "  Ein   Hund\tläuft\n über die Wiese  ", "Tom &amp;amp; Jerry &lt;3",
           "cafÃ© crÃ¨me", "城市夜景，霓虹灯闪烁", "unknown ✨ symbols ☃", "word " * 700]


@pytest.fixture(scope="module")
def folder(umt5_tokenizer):
    return umt5_tokenizer


def test_cleaning_hand_worked():
    assert clean_prompt("  a \t b\n\nc  ") == "a b c"
    assert clean_prompt("Tom &amp;amp; Jerry") == "Tom & Jerry"          # unescaped twice
    assert clean_prompt("cafÃ© crÃ¨me") == "café crème"                  # ftfy repairs mojibake


def test_ids_and_masks_equal_transformers(folder):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = PromptTokenizer(folder)
    for prompt in PROMPTS:
        text = clean_prompt(prompt)                      # the reference cleans, then tokenizes
        ref = reference([text], padding="max_length", truncation=True, max_length=512, add_special_tokens=True,
                        return_tensors="np")
        ids, mask = ours(prompt)
        np.testing.assert_array_equal(ids, ref.input_ids[0], err_msg=prompt[:40])
        np.testing.assert_array_equal(mask, ref.attention_mask[0], err_msg=prompt[:40])
    ids, mask = ours("word " * 700)
    assert mask.sum() == 512 and ids[-1] == 1                # truncated to 512, </s> kept last
    ids, mask = ours("a cat")
    assert ids[int(mask.sum()) - 1] == 1 and (ids[int(mask.sum()):] == 0).all()


def test_encode_prompt_tiny(folder):
    pytest.importorskip("torch")
    emb = encode_prompt("a cat walks on the beach", folder, preset="tiny")
    n = int(PromptTokenizer(folder)("a cat walks on the beach")[1].sum())
    assert emb.shape == (512, 4096) and emb.dtype == np.float32
    assert np.abs(emb[:n]).min() > 0 and not emb[n:].any()


@pytest.mark.parametrize("make, message", [
    (lambda d: ("   ", d), "the prompt is empty"),
    (lambda d: ("a cat", d.parent / "nowhere"), "is not a folder"),
    (lambda d: ("a cat", d.parent), "has no tokenizer.json"),
])
def test_bad_inputs(folder, make, message):
    prompt, where = make(folder)
    with pytest.raises(DysinkError, match=message):
        PromptTokenizer(where)(prompt)
