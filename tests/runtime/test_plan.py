"""The memory planner against figures worked out by hand."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime.plan import (check_allocation, page_bytes, parse_memory, plan, scale_bytes, search,
                                        weight_counts)


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


def test_eight_bit_pages_are_half_plus_scales():
    # 1 byte per element: 862_617_600 / 2 = 431_308_800; scales: one float32 per (layer, K|V, token, head):
    # 2 x 30 x 4680 x 12 x 4 = 13_478_400 bytes; page = 444_787_200 bytes (0.445 GB)
    m = model_preset("wan2.1-t2v-1.3b")
    s = m.default_stream()
    assert scale_bytes(m, s, "int8") == 2 * 30 * 4680 * 12 * 4 == 13_478_400
    for kind in ("fp8", "int8"):
        assert page_bytes(m, s, "bf16", kind) == 431_308_800 + 13_478_400
    assert page_bytes(m, s, "fp32", "bf16") == 862_617_600 and scale_bytes(m, s, "bf16") == 0


def test_weights_from_formulas_equal_the_modules():
    torch = pytest.importorskip("torch")
    from dysink_deploy.models.dit import CausalWanDiT
    from dysink_deploy.models.pe_core import PECoreVisionEncoder
    from dysink_deploy.models.vae import WanVAEDecoder

    for name in ("tiny", "wan2.1-t2v-1.3b"):
        m = model_preset(name)
        with torch.device("meta"):
            nets = {"dit": CausalWanDiT(m.dit), "vae_decoder": WanVAEDecoder(m.vae),
                    "memory_encoder": PECoreVisionEncoder(m.pe)}
        counted = {k: sum(p.numel() for p in v.parameters()) for k, v in nets.items()}
        assert weight_counts(m) == counted, name


def test_huge_models_are_counted_not_built():
    import dataclasses
    import time
    m = model_preset("wan2.1-t2v-1.3b")
    big = dataclasses.replace(m, dit=dataclasses.replace(m.dit, layers=100_000))
    t0 = time.perf_counter()
    with pytest.raises(DysinkError, match="needs about .* GB .* but the test machine has 24.0 GB"):
        check_allocation(big, big.default_stream(), "bf16", parse_memory("24GB"), "the test machine")
    assert time.perf_counter() - t0 < 2


def test_host_bank_keeps_only_window_and_staging_on_the_device():
    m = model_preset("wan2.1-t2v-1.3b")
    s = m.default_stream()
    page = page_bytes(m, s, "bf16")
    dev = plan(m, s, "bf16", parse_memory("64GB"))
    host = plan(m, s, "bf16", parse_memory("64GB"), bank_placement="host")
    # device pool: window history 4 + the block being made + top_k 2 staging pages = 7 (not 21)
    assert dev.total - host.total == (21 - 7) * page and host.host_bank == 16 * page
    jet = plan(m, s, "bf16", parse_memory("64GB"), "jetson", bank_placement="host")
    # one memory: nothing saved, and the top_k staging pages cost more
    assert jet.total == plan(m, s, "bf16", parse_memory("64GB"), "jetson").total + 2 * page


def test_search_16gb_desktop_and_24gb_released():
    m = model_preset("wan2.1-t2v-1.3b")
    s = m.default_stream(bank_capacity=16)
    fits16 = search(m, s, "bf16", parse_memory("16GB"), resolutions=[(480, 832)], capacity_fixed=True)
    assert fits16 and all(p.fits and p.bank_capacity == 16 for p in fits16)
    released = search(m, s, "bf16", parse_memory("24GB"), placements=["device"], resolutions=[(480, 832)],
                      capacity_fixed=True)
    assert {p.kv_cache_dtype for p in released} == {"fp8", "int8"}     # bf16 pages need 30.1 GB
    assert "fp8" not in {p.kv_cache_dtype for p in search(m, s, "bf16", parse_memory("64GB"), "jetson")}


def test_cli_fits_and_refuses():
    ok = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16", "--memory",
                                          "64GB", "--platform", "jetson"])
    assert ok.exit_code == 0, ok.output
    assert "K/V pool: 21 pages x 0.863 GB" in ok.output and ok.output.strip().splitlines()[-1].startswith("PASSED")
    assert "TensorRT 10.3" in ok.output and "saves nothing" in ok.output
    # plan's --precision default is fp32, as onnx's and dysink-run's: the 1.3B figures below are bf16's
    small = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16", "--memory",
                                             "6GB", "--height", "480", "--width", "832"])
    assert small.exit_code == 2 and "does not fit in 6.0 GB" in small.output
    big_bank = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16",
                                                "--memory", "24GB",
                                                "--bank-capacity", "40", "--kv-cache-dtype", "auto",
                                                "--bank-placement", "device", "--height", "480",
                                                "--width", "832"])
    assert big_bank.exit_code == 2 and "the largest that fits is" in big_bank.output
    desk = CliRunner().invoke(export_main, ["plan", "--model", "wan2.1-t2v-1.3b", "--precision", "bf16", "--memory",
                                            "16GB", "--platform", "desktop", "--height", "480", "--width", "832", "--bank-capacity", "16"])
    assert desk.exit_code == 0, desk.output
    assert "--bank-placement host --bank-capacity 16 --height 480 --width 832" in desk.output
