"""The onnxruntime backend on tiny-preset bundles: stream parity with the torch backend, dysink-run,
`dysink-export check`, and every refusal as one line.

Parity (fp32 bundle, 12 blocks, released config with dedup 0.985 as in test_fidelity.py so retrieval,
gate drops and dedup skips all happen — asserted): decisions identical to the torch backend; latents,
features and frames within the measured rule of STYLE.md: the ONNX Runtime error against a float64
torch run may be at most 2x the torch fp32 backend's error against that same run.
Bundles are exported once per module (seconds each).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import Bundle, sha256_file, write_manifest  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.runtime import cli as run_cli  # noqa: E402
from dysink_deploy.runtime.report import decisions  # noqa: E402
from tests.no_torch import BLOCK_TORCH  # noqa: E402

BLOCKS = 12
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _dysink_run(*args):
    return CliRunner().invoke(run_cli.main, ["--quiet", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def parity(bundles, tmp_path_factory, request):
    """Both backends through dysink-run (records captured on the way), plus a float64 torch run."""
    import torch

    from dysink_deploy.config import model_preset
    from dysink_deploy.models.factory import build_models
    from dysink_deploy.runtime.backends.torch_backend import TorchBackend
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from dysink_deploy.runtime.stream import Streamer

    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    captured: dict[str, list] = {"torch": [], "onnxruntime": []}
    real_blocks = Streamer.blocks

    def capturing(self, n, pipeline=None):     # dysink-run pipelines the onnxruntime stream (2+ cores)
        for record in real_blocks(self, n, pipeline):
            captured[self.backend.name].append(record)
            yield record

    mp.setattr(Streamer, "blocks", capturing)
    outs = {}
    for name, extra in (("torch", []), ("onnxruntime", ["--bundle", bundles("fp32")])):
        outs[name] = tmp_path_factory.mktemp(f"run-{name}")
        res = _dysink_run("--backend", name, *extra, "--blocks", BLOCKS, "--seed", 0, "--dedup-threshold", 0.985,
                          "--out", outs[name], "--overwrite")
        assert res.exit_code == 0, res.output
    mp.undo()

    model = model_preset("tiny")
    stream = model.default_stream(dedup_threshold=0.985)
    backend64 = TorchBackend(build_models(model, seed=0), stream, dtype=torch.float64)
    ref64 = list(Streamer(backend64, model.dit, stream, default_prompt_embeds(model), seed=0).blocks(BLOCKS))
    stats = {n: json.loads((o / "stats.json").read_text()) for n, o in outs.items()}
    return captured["torch"], captured["onnxruntime"], ref64, stats


def test_decisions_identical_to_torch(parity):
    torch_recs, ort_recs, ref64, _ = parity
    assert len(torch_recs) == len(ort_recs) == BLOCKS
    for a, b, c in zip(torch_recs, ort_recs, ref64):
        where = f"block {a.index}"
        for rec in (b, c):
            assert (rec.window_frames, rec.bank_size) == (a.window_frames, a.bank_size), where
            assert [x["start_frame"] for x in rec.retrieved] == [x["start_frame"] for x in a.retrieved], where
            assert [g["dropped"] for g in rec.gate] == [g["dropped"] for g in a.gate], where
            assert [g["dropped"] for g in rec.fixed_sink_gate] == [g["dropped"] for g in a.fixed_sink_gate], where
            assert rec.stored == a.stored, where
        np.testing.assert_allclose([x["score"] for x in b.retrieved], [x["score"] for x in a.retrieved],
                                   atol=1e-5, err_msg=where)
        assert [g["ratios"] for g in b.gate] == [g["ratios"] for g in a.gate], where


def test_every_mechanism_is_exercised(parity):
    torch_recs = parity[0]
    cells = [c for r in torch_recs for g in r.gate for step in g["dropped"] for c in step]
    assert any(r.retrieved for r in torch_recs), "no retrieval happened"
    assert any(cells) and not all(cells), "need both gate drops and kept sinks"
    assert any(not r.stored for r in torch_recs[1:]), "no dedup skip happened"


def test_dysink_run_stats_decisions_identical(parity):
    stats = parity[3]
    assert stats["onnxruntime"]["config"]["backend"] == "onnxruntime"
    assert stats["onnxruntime"]["config"]["precision"] == "fp32"
    # dysink-run pipelines the decodes where the backend gains (onnxruntime on 2+ cores), never on torch
    assert stats["onnxruntime"]["config"]["pipeline"] is ((os.cpu_count() or 1) >= 2)
    assert stats["torch"]["config"]["pipeline"] is False
    assert decisions(stats["onnxruntime"]) == decisions(stats["torch"])


def _max_err(recs, ref, field):
    return max(float(np.abs(getattr(r, field) - getattr(x, field)).max()) for r, x in zip(recs, ref))


@pytest.mark.parametrize("field", ["latent", "feature"])
def test_within_measured_tolerance(parity, field):
    torch_recs, ort_recs, ref64, _ = parity
    base = _max_err(torch_recs, ref64, field)
    ours = _max_err(ort_recs, ref64, field)
    assert base > 0, "the float64 run must differ from fp32 somewhere, or the baseline means nothing"
    assert ours <= 2 * base, f"onnxruntime {field} error {ours:.3g} > 2 x torch fp32 error {base:.3g}"


def test_frames_within_measured_tolerance(parity):
    torch_recs, ort_recs, ref64, _ = parity
    ref = np.concatenate([r.frames for r in ref64]).astype(int)
    ours = np.concatenate([r.frames for r in ort_recs]).astype(int)
    base = np.concatenate([r.frames for r in torch_recs]).astype(int)
    assert ours.shape == ref.shape == (9 + 12 * (BLOCKS - 1), 64, 96, 3)
    # fp32 rounding may move a value across an 8-bit rounding boundary: one level, rarely.
    assert np.abs(ours - ref).max() <= 1
    assert (ours != ref).mean() <= 2 * max((base != ref).mean(), 1e-4)


def test_fp16_bundle_streams(bundles, tmp_path):
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from dysink_deploy.runtime.stream import Streamer

    bundle = Bundle.load(bundles("fp16"), expect_precision="fp16")
    backend = OnnxRuntimeBackend(bundle)
    recs = list(Streamer(backend, bundle.model.dit, bundle.stream, default_prompt_embeds(bundle.model)).blocks(5))
    assert all(np.isfinite(r.latent).all() and np.isfinite(r.feature).all() for r in recs)
    assert sum(r.frames.shape[0] for r in recs) == 9 + 4 * 12
    assert backend.k_pools[0][1].dtype == np.float16, "pools hold the bundle's precision"


def test_pools_allocated_once_and_written_in_place(bundles):
    """write_page changes the arrays bound to dit_step, never replaces them (no per-step pool copy)."""
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from dysink_deploy.runtime.prompts import default_prompt_embeds
    from dysink_deploy.runtime.stream import Streamer

    bundle = Bundle.load(bundles("fp32"))
    backend = OnnxRuntimeBackend(bundle)
    streamer = Streamer(backend, bundle.model.dit, bundle.stream, default_prompt_embeds(bundle.model))
    pools = [host for _, host in backend.k_pools]
    ptrs = [value.data_ptr() for value, _ in backend.k_pools]
    streamer.step()
    streamer.step()
    assert [host for _, host in backend.k_pools] == pools and [v.data_ptr() for v, _ in backend.k_pools] == ptrs
    written = [p for p in range(bundle.stream.pool_pages) if np.any(pools[0][p])]
    assert len(written) == 2, "one page per block"
    assert all(v.data_ptr() == h.ctypes.data for v, h in backend.k_pools), "OrtValues wrap the numpy pools"


def test_device_ops_graphs_match_numpy():
    """The tiny renoise / cast graphs used on GPU providers, run here on CPU."""
    import onnxruntime as ort

    from dysink_deploy.runtime.backends.onnxruntime_backend import _DeviceOps

    ops = _DeviceOps(ort, ("CPUExecutionProvider",), "fp16", ("cpu", 0))
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal((2, 16, 3, 4, 5), dtype=np.float32)
    val = ort.OrtValue.ortvalue_from_numpy
    np.testing.assert_array_equal(ops.renoise(val(x0), val(eps), 0.8333333).numpy(),
                                  (1.0 - 0.8333333) * x0 + 0.8333333 * eps)
    z = ops.to_model(val(x0), (1,) + x0.shape).numpy()
    assert z.dtype == np.float16 and z.shape == (1,) + x0.shape
    np.testing.assert_array_equal(z[0], x0.astype(np.float16))


NO_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import sys
    from dysink_deploy.runtime import cli
    try:
        cli.main(["--backend", "onnxruntime", "--bundle", sys.argv[1], "--blocks", "2", "--out", sys.argv[2],
                  "--quiet"])
    except SystemExit as exc:
        assert not exc.code, f"exit {exc.code}"
    assert "torch" not in sys.modules, "torch was imported"
    print("no torch")
""")


def test_dysink_run_onnxruntime_without_torch(bundles, tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundles("fp32")), str(tmp_path / "o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no torch" in proc.stdout, proc.stderr[-2000:]
    assert "DONE | 2 blocks, 21 frames" in proc.stdout
    assert len(json.loads((tmp_path / "o" / "stats.json").read_text())["blocks"]) == 2


# -- refusals -------------------------------------------------------------------------------------------
def _copy(bundle, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(bundle, dst)
    return dst


def _damage_missing(b):
    (b / "retrieve.onnx").unlink()


def _damage_checksum(b):
    data = bytearray((b / "retrieve.onnx").read_bytes())
    data[-1] ^= 0xFF
    (b / "retrieve.onnx").write_bytes(bytes(data))


def _damage_version(b):
    manifest = json.loads((b / "bundle.json").read_text())
    manifest["format_version"] = 99
    (b / "bundle.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (_damage_missing, "is missing retrieve.onnx"),
    (_damage_checksum, "does not match its sha256"),
    (_damage_version, "has format version 99"),
    (None, "does not exist"),
])
def test_bad_bundles_one_line(bundles, tmp_path, damage, message):
    if damage is None:
        path = tmp_path / "nowhere"
    else:
        path = _copy(bundles("fp32"), tmp_path)
        damage(path)
    res = _dysink_run("--backend", "onnxruntime", "--bundle", path, "--out", tmp_path / "o")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        res.output
    assert not (tmp_path / "o").exists()
    from dysink_deploy.cli.export_cli import main as export_main
    res = CliRunner().invoke(export_main, ["check", "--bundle", str(path)], catch_exceptions=False)
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--gate-threshold", 0.5], "gate_threshold=0.5 (bundle: 0.8) differ"),
    (["--top-k", 3], "top_k=3 (bundle: 2)"),
    (["--model", "wan2.1-t2v-1.3b"], "conflicts with bundle"),
    (["--precision", "fp16"], "--precision: torch-backend flag"),
    (["--ort-provider", "cuda"], "has no CUDAExecutionProvider"),
])
def test_conflicting_flags_one_line(bundles, tmp_path, args, message):
    import onnxruntime as ort

    if "cuda" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    res = _dysink_run("--backend", "onnxruntime", "--bundle", bundles("fp32"), "--out", tmp_path / "o", *args)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output


def test_host_settings_may_change(bundles, tmp_path):
    res = _dysink_run("--backend", "onnxruntime", "--bundle", bundles("fp32"), "--out", tmp_path, "--blocks", 1,
                      "--dedup-threshold", 0.9, "--eviction", "fifo", "--gate-threshold", 0.8)
    assert res.exit_code == 0, res.output


def test_tensorrt_backend_refusals(bundles, tmp_path):
    res = _dysink_run("--backend", "tensorrt", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--backend tensorrt needs --bundle DIR" in res.output
    res = _dysink_run("--backend", "tensorrt", "--bundle", bundles("fp32"), "--ort-provider", "cuda",
                      "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--ort-provider applies to --backend onnxruntime only" in res.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = _dysink_run("--backend", "tensorrt", "--bundle", bundles("fp32"), "--out", tmp_path / "o")
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and "TensorRT's Python package is not installed" in lines[0]
    assert not (tmp_path / "o").exists()


def test_bf16_refused_on_cpu(bundles, tmp_path):
    """A bundle whose manifest says bf16 (files relabelled from fp32: the refusal reads only the manifest)."""
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    src = Bundle.load(bundles("fp32"))
    path = _copy(src.path, tmp_path, "tiny-bf16")
    write_manifest(path, src.model, src.stream, "bf16", {n: {"file": g.file} for n, g in src.graphs.items()})
    with pytest.raises(DysinkError, match="bf16 graphs, which ONNX Runtime cannot run on CPU.*--precision fp16"):
        OnnxRuntimeBackend(Bundle.load(path))
    res = _dysink_run("--backend", "onnxruntime", "--bundle", path, "--out", tmp_path / "o")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "bf16" in res.output


# -- dysink-export check ------------------------------------------------------------------------------
def _check(path, *args):
    from dysink_deploy.cli.export_cli import main as export_main

    return CliRunner().invoke(export_main, ["check", "--bundle", str(path), *args], catch_exceptions=False)


def test_check_passes_on_good_bundle(bundles):
    res = _check(bundles("fp32"))
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith("PASSED | 59 outputs | Runtime: ")
    assert "- [✓] dit_step: 4 outputs within tolerance" in res.output and "- [✓] retrieve: 2 outputs" in res.output
    assert "- [✓] stream of 6 blocks: 0 blocks with different decisions" in res.output
    assert "[x]" not in res.output


def test_check_fails_on_tampered_weights(bundles, tmp_path):
    """Weights changed and the checksum re-written: only the numerics can catch it; every output is still listed."""
    import onnx
    from onnx import numpy_helper

    path = _copy(bundles("fp32"), tmp_path)
    model = onnx.load(str(path / "dit_step.onnx"))
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(big)
    big.CopyFrom(numpy_helper.from_array((arr * 1.5).astype(arr.dtype), big.name))
    onnx.save(model, str(path / "dit_step.onnx"))
    manifest = json.loads((path / "bundle.json").read_text())
    entry = manifest["graphs"]["dit_step"]
    entry["sha256"], entry["bytes"] = sha256_file(path / "dit_step.onnx"), (path / "dit_step.onnx").stat().st_size
    (path / "bundle.json").write_text(json.dumps(manifest))
    Bundle.load(path)   # the manifest is consistent again

    res = _check(path)
    assert res.exit_code == 1, res.output
    assert "- [x] dit_step/x0" in res.output
    assert "- [✓] vae_decode: 25 outputs within tolerance" in res.output, "graphs after the failing one are still checked"
    assert res.output.strip().splitlines()[-1].startswith("FAILED | ")
