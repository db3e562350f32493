"""The memory planner against figures worked out by hand."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime.plan import page_bytes, parse_memory, plan


def test_page_of_the_1_3b_model_at_480x832():
    # 2 (K, V) x 30 layers x 4680 tokens (3 frames x 30 x 52) x 12 heads x 128 x 2 bytes (bf16)
    m = model_preset("wan2.1-t2v-1.3b")
    assert page_bytes(m, m.default_stream(), "bf16") == 2 * 30 * 4680 * 12 * 128 * 2 == 862_617_600
    assert page_bytes(m, m.default_stream(), "fp32") == 2 * 862_617_600


def test_tiny_page_and_pool_pages():
    m = model_preset("tiny")
    s = m.default_stream()
    # 64x96 -> latent 8x12 -> 4x6 patches x 3 frames = 72 tokens; 2 layers, 2 heads x 32, fp32
    assert page_bytes(m, s, "fp32") == 2 * 2 * 72 * 2 * 32 * 4
    p = plan(m, s, "fp32", parse_memory("64GB"))
    assert p.fixed_pages == 5 and s.pool_pages == 16 + 5    # window history 4 + the block being made


def test_largest_bank_is_what_the_budget_leaves():
    m = model_preset("wan2.1-t2v-1.3b")
    s = m.default_stream()
    p = plan(m, s, "bf16", parse_memory("64GB"))
    fixed = p.total - s.pool_pages * p.page                 # everything but the pool
    budget = fixed + (p.fixed_pages + 7) * p.page + p.page // 2
    assert plan(m, s, "bf16", budget).max_bank_capacity == 7


def test_parse_memory():
    assert parse_memory("64GB") == 64 * 10 ** 9
    assert parse_memory("16GiB") == 16 * 2 ** 30
    assert parse_memory("8000 MB") == 8 * 10 ** 9
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(DysinkError):
            parse_memory(bad)


def test_cli_fits_and_refuses():
    ok = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16", "--memory",
                                          "64GB", "--platform", "jetson"])
    assert ok.exit_code == 0, ok.output
    assert "K/V pool: 21 pages x 0.863 GB" in ok.output and ok.output.strip().splitlines()[-1].startswith("PASSED")
    small = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--memory", "8GB"])
    assert small.exit_code == 2 and "does not fit in 8.0 GB" in small.output
    big_bank = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--memory", "24GB",
                                                "--bank-capacity", "40"])
    assert big_bank.exit_code == 2 and "the largest that fits is" in big_bank.output
