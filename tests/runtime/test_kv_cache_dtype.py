"""--kv-cache-dtype end to end: the torch backend (the reference op reading quantised pools) and the
onnxruntime backend (the GatedSinkAttentionQ8 function body, pages quantised with numpy) on the same
8-bit stream, the bundle's record of it, and its refusals.

Rule (STYLE.md): the plain-PyTorch low-precision run here is the torch fp32 backend on the same
8-bit pages; against a float64 run on model-precision pages, the onnxruntime error may be at most 2x
its error (+1e-6). (Against a float64 run on int8 pages the errors are fp32 noise plus the odd value
that lands on the other side of an int8 rounding step: a 1e-5 jump whose count differs from one
float32 implementation to the next, which no 2x rule can bound.) Decisions (retrievals, gate drops,
dedup) equal those of the float64 run on int8 pages.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.runtime.builder import open_streamer  # noqa: E402
from dysink_deploy.runtime.report import decisions  # noqa: E402
from dysink_deploy.runtime.spec import RunSpec  # noqa: E402

BLOCKS = 6        # dedup skips from block 2, retrieval from block 4
SETTINGS = {"dedup_threshold": 0.985}


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from dysink_deploy.export.onnx_export import export_onnx

    return export_onnx("tiny", precision="fp32", out=tmp_path_factory.mktemp("kv") / "int8", kv_cache_dtype="int8")


def _records(spec: RunSpec, blocks: int = BLOCKS, models=None):
    streamer, config = open_streamer(spec, models=models)
    try:
        return list(streamer.blocks(blocks)), config
    finally:
        streamer.backend.close()


def _decisions(recs):
    return decisions({"blocks": [r.to_json() for r in recs]})


def test_bundle_records_the_page_type_and_its_contract(int8_bundle):
    b = Bundle.load(int8_bundle)
    assert b.kv_cache_dtype == "int8"
    spec = b.specs["dit_step"]
    assert spec.input("k_pool_0").dtype == "int8" and spec.input("v_pool_1").dtype == "int8"
    assert spec.input("k_scale_0").shape == spec.input("k_pool_0").shape[:3]
    assert spec.input("k_scale_0").dtype == "float32"
    assert "--kv-cache-dtype int8" in b.rebuild_command()


def test_onnxruntime_and_torch_agree_on_int8_pages(int8_bundle):
    import torch

    from dysink_deploy.config import model_preset
    from dysink_deploy.models.factory import build_models
    from dysink_deploy.runtime.backends.torch_backend import TorchBackend
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from dysink_deploy.runtime.stream import Streamer

    torch_recs, torch_cfg = _records(RunSpec(model="tiny", kv_cache_dtype="int8", settings=SETTINGS))
    ort_recs, ort_cfg = _records(RunSpec(backend="onnxruntime", bundle=str(int8_bundle), settings=SETTINGS))
    assert torch_cfg["kv_cache_dtype"] == ort_cfg["kv_cache_dtype"] == "int8"
    model = model_preset("tiny")
    stream = model.default_stream(**SETTINGS)
    ref64, exact64 = (list(Streamer(TorchBackend(build_models(model, seed=0), stream, dtype=torch.float64,
                                                 kv_cache_dtype=kind), model.dit, stream,
                                    default_prompt_embeds(model), seed=0).blocks(BLOCKS)) for kind in ("int8", "auto"))
    assert _decisions(ort_recs) == _decisions(torch_recs) == _decisions(ref64)
    d = _decisions(torch_recs)
    assert any(b["retrieved"] for b in d) and any(not b["stored"] for b in d[1:]), "retrieval and dedup both happen"
    for a, b, c in zip(torch_recs, ort_recs, exact64):
        torch_err = np.abs(a.latent - c.latent).max()
        ort_err = np.abs(b.latent - c.latent).max()
        assert ort_err <= 2 * torch_err + 1e-6, (a.index, ort_err, torch_err)


def test_pages_hold_8_bits_and_read_back_dequantised(int8_bundle):
    from dysink_deploy.runtime.pages import np_dequantise_pages

    streamer, _ = open_streamer(RunSpec(backend="onnxruntime", bundle=str(int8_bundle), settings=SETTINGS))
    try:
        rec = streamer.step()
        be = streamer.backend
        host = be.k_pools[0][1]
        assert host.dtype == np.int8 and be.k_scales[0][1].dtype == np.float32
        page = next(p for p in range(host.shape[0]) if np.abs(host[p]).max() > 0)   # the block's page
        k, _ = be.read_page(page)
        np.testing.assert_array_equal(k[0], np_dequantise_pages(host[page], be.k_scales[0][1][page], np.float32))
        assert np.abs(host[page]).max() == 127                  # every row's maximum maps to +-127
        assert rec.index == 0
    finally:
        streamer.backend.close()


@pytest.mark.parametrize("kind", ["fp8"])       # bf16 pages: the bf16-model test below and the op tests
def test_torch_stream_runs_on_other_page_types(kind):
    """bf16 and e4m3 pages on the fp32 torch backend: the stream runs, decisions equal the model-precision
    stream here (random tiny weights), and the latents move away from it by the page rounding only."""
    base, _ = _records(RunSpec(model="tiny", settings=SETTINGS), blocks=4)
    recs, cfg = _records(RunSpec(model="tiny", kv_cache_dtype=kind, settings=SETTINGS), blocks=4)
    assert cfg["kv_cache_dtype"] == kind
    assert _decisions(recs) == _decisions(base)
    diffs = [np.abs(a.latent - b.latent).max() for a, b in zip(base, recs)]
    assert diffs[0] == 0.0                    # block 0 reads no page
    assert 0 < max(diffs) < 0.5, diffs


def test_auto_and_bf16_pages_are_bit_identical_on_a_bf16_model():
    # two blocks: block 1 reads block 0's page (bf16 on the CPU is slow: each block costs ~7 s here)
    a, _ = _records(RunSpec(model="tiny", precision="bf16"), blocks=2)
    b, _ = _records(RunSpec(model="tiny", precision="bf16", kv_cache_dtype="bf16"), blocks=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.latent, y.latent)
        np.testing.assert_array_equal(x.frames, y.frames)


def test_refusals_are_one_line(int8_bundle):
    with pytest.raises(DysinkError, match="conflicts with bundle .* reads int8 pages"):
        _records(RunSpec(backend="onnxruntime", bundle=str(int8_bundle), kv_cache_dtype="fp8"), blocks=1)



def test_tensorrt_paths_take_8bit_bundles(int8_bundle, tmp_path, monkeypatch):
    """`dysink-export build` and `--backend tensorrt` take int8 pages (they refused them before the
    backend's quantised page writes): against the TensorRT / cuda-python stand-ins
    (tests/tensorrt_standin.py; nothing runs on TensorRT or a GPU here) the real int8 bundle builds, and
    the backend checks the int8 pools against the contract and builds its int8 page quantiser."""
    import sys

    from dysink_deploy.export import trt_build as tb
    from dysink_deploy.runtime.backends import cuda as cuda_mod
    from dysink_deploy.runtime.backends import plugin_library
    from dysink_deploy.runtime.backends import tensorrt_backend as trb
    from tests.tensorrt_standin import FakeCudaRuntime, FakeTensorRT

    trt = FakeTensorRT(specs=Bundle.load(int8_bundle).specs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (tb, trb):
        monkeypatch.setattr(module, "compute_capability", lambda: "sm_87")
    monkeypatch.setattr(cuda_mod, "_cudart", FakeCudaRuntime)
    monkeypatch.setattr(plugin_library, "_loaded", {})
    lib = tmp_path / "libdysink_plugins.so"
    lib.write_bytes(b"a plugin library built with --kv-cache-dtype int8")
    out = tb.build_engines(str(int8_bundle), out=str(tmp_path / "built"), plugins=str(lib))
    backend = trb.TensorRTBackend(Bundle.load(out))
    try:
        assert backend.quantised and backend.specs["dit_step"].input("k_pool_0").dtype == "int8"
        net, _ = trt.network_with_output("q")
        assert [(t.name, t.dtype) for t in net.outputs] == [("q", "INT8"), ("scale", "FLOAT")]
    finally:
        backend.close()


def test_dysink_run_flag(int8_bundle, tmp_path):
    import json

    from click.testing import CliRunner

    from dysink_deploy.runtime import cli as run_cli

    res = CliRunner().invoke(run_cli.main, ["--quiet", "--bundle", str(int8_bundle), "--blocks", "2",
                                            "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["config"]["kv_cache_dtype"] == "int8"
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--bundle", str(int8_bundle), "--kv-cache-dtype", "fp8",
                                            "--blocks", "1", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "conflicts with bundle" in res.output and not (tmp_path / "p").exists()


def test_export_check_passes_on_an_int8_bundle(int8_bundle):
    """`dysink-export check` feeds the graphs 8-bit pools with their scales and streams the torch
    reference on the same page type (before: the check fed no scales and failed)."""
    from click.testing import CliRunner

    from dysink_deploy.cli.export_cli import main as export_main

    res = CliRunner().invoke(export_main, ["check", "--bundle", str(int8_bundle), "--blocks", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output and "dit_step: 4 outputs within tolerance" in res.output
