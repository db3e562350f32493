"""Prompt switches (ALGORITHM.md section 9): the paged runtime's recache against the naive
transcription of the reference's interactive loop, on torch and onnxruntime; page accounting."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dysink_deploy.config import model_preset  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from dysink_deploy.models.factory import build_models  # noqa: E402
from dysink_deploy.runtime.backends.torch_backend import TorchBackend  # noqa: E402
from dysink_deploy.runtime.prompts import default_prompt_embeds  # noqa: E402
from dysink_deploy.runtime.stream import Streamer  # noqa: E402
from tests.naive_dysink import NaiveDySink  # noqa: E402

BLOCKS = 14
SETTINGS = {"dedup_threshold": 0.985, "gate_threshold": 0.8, "bank_capacity": 16}
MODEL = model_preset("tiny")
PROMPT0 = default_prompt_embeds(MODEL)
# Frame 3 = block 1, when the bank holds one entry (< top_k 2: the window is 12 frames, n = 3);
# frame 24 = block 8, with a full window (n = 9: three blocks, the oldest only as context).
SWITCHES = [(3, default_prompt_embeds(MODEL, seed=77)), (24, default_prompt_embeds(MODEL, seed=78))]


def _records(streamer, blocks):
    return [streamer.step() for _ in range(blocks)]


def _naive_pair(settings):
    stream = MODEL.default_stream(**settings)
    models = build_models(MODEL, seed=0)
    n32 = NaiveDySink(models, stream, PROMPT0, seed=0, prompts=SWITCHES)
    n64 = NaiveDySink(copy.deepcopy(models).double(), stream, PROMPT0, seed=0, prompts=SWITCHES)
    for i in range(BLOCKS):
        n32.block(i)
        n64.block(i)
    return n32, n64


@pytest.fixture(scope="module")
def naive():
    return _naive_pair(SETTINGS)


def _assert_same(records, naive):
    for r, n in zip(records, naive.log):
        where = f"block {r.index}"
        assert r.window_frames == n["window_frames"], where
        assert r.bank_size == n["bank_size"], where
        assert [x["start_frame"] for x in r.retrieved] == n["retrieved"], where
        assert [g["dropped"] for g in r.gate] == n["dropped"], where
        assert r.stored == n["stored"], where


def test_torch_switches_match_the_naive_reference(naive):
    n32, n64 = naive
    stream = MODEL.default_stream(**SETTINGS)
    s = Streamer(TorchBackend(build_models(MODEL, seed=0), stream), MODEL.dit, stream, PROMPT0, seed=0,
                 prompts=SWITCHES)
    records = _records(s, BLOCKS)
    _assert_same(records, n32)
    _assert_same(records, n64)
    switched = [(r.index, r.prompt_switch) for r in records if r.prompt_switch]
    assert [(i, sw["frames_recached"], sw["entries_recached"]) for i, sw in switched] == \
        [(x["block"], x["frames"], x["entries"]) for x in n32.switch_log]
    assert switched[0][0] == 1 and switched[0][1]["frames_recached"] == 3 and records[1].bank_size == 1
    assert switched[1][0] == 8 and switched[1][1]["frames_recached"] == 9
    assert any(r.retrieved for r in records[9:]), "retrieval after a switch reads recached entries"
    # The switch changes the video: without it the latents after block 1 differ.
    plain = Streamer(TorchBackend(build_models(MODEL, seed=0), stream), MODEL.dit, stream, PROMPT0, seed=0)
    other = _records(plain, 3)
    assert np.abs(other[2].latent - records[2].latent).max() > 1e-3


def test_switch_latents_within_measured_tolerance():
    """Latents against a float64 naive run: at most 2x the naive fp32 run's error. Measured with
    sink_kv_bf16 off: with it on, the bf16 rounding of retrieved K/V turns fp32 noise in the
    recached K/V (computed by another path than the naive one's) into whole bf16 steps now and
    then (measured: 2.5e-6 at one block vs 7e-7; off, every block sits at 5-7e-7 on both sides)."""
    settings = {**SETTINGS, "sink_kv_bf16": False}
    n32, n64 = _naive_pair(settings)
    stream = MODEL.default_stream(**settings)
    s = Streamer(TorchBackend(build_models(MODEL, seed=0), stream), MODEL.dit, stream, PROMPT0, seed=0,
                 prompts=SWITCHES)
    records = _records(s, BLOCKS)
    _assert_same(records, n32)
    ours = max(float(np.abs(r.latent - n["latent"]).max()) for r, n in zip(records, n64.log))
    base = max(float(np.abs(a["latent"] - n["latent"]).max()) for a, n in zip(n32.log, n64.log))
    assert ours <= 2 * base, f"runtime error {ours:.3g} > 2 x naive fp32 error {base:.3g}"


def test_onnxruntime_switches_match_the_naive_reference(naive, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dysink_deploy.export.onnx_export import export_onnx
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle_path = export_onnx("tiny", precision="fp32", out=tmp_path / "b", interactive=True)
    from dysink_deploy.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    assert bundle.interactive and "--interactive" in bundle.rebuild_command()
    stream = bundle.stream.__class__(**{**bundle.stream.to_dict(), **SETTINGS})
    s = Streamer(OnnxRuntimeBackend(bundle), MODEL.dit, stream, PROMPT0, seed=0, prompts=SWITCHES)
    records = _records(s, BLOCKS)
    _assert_same(records, naive[0])
    assert [r.index for r in records if r.prompt_switch] == [1, 8]


def test_a_bundle_without_the_recache_graph_says_how_to_get_it(bundles):
    from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = __import__("dysink_deploy.bundle", fromlist=["Bundle"]).Bundle.load(bundles("fp32"))
    s = Streamer(OnnxRuntimeBackend(bundle), MODEL.dit, bundle.stream, PROMPT0, seed=0, prompts=[(3, PROMPT0)])
    s.step()
    with pytest.raises(DysinkError, match="has no dit_recache graph.*--interactive"):
        s.step()


def test_pages_do_not_leak_over_many_switches():
    """A switch every block for 30 blocks with a small bank that evicts: every page in use is
    referenced by the bank or the window history, and no more pages are in use than that."""
    stream = MODEL.default_stream(dedup_threshold=0.99, bank_capacity=3)
    s = Streamer(TorchBackend(build_models(MODEL, seed=0), stream), MODEL.dit, stream, PROMPT0, seed=0)
    for i in range(30):
        s.switch_prompt(default_prompt_embeds(MODEL, seed=100 + i % 2), frame=(i + 1) * 3)
        s.step()
        referenced = {int(p) for p in s.bank.page[s.bank.start >= 0]} | {p for _, p in s.scheduler.history}
        assert s.pages.in_use == len(referenced), i
        for p in referenced:
            expected = int((s.bank.page == p).sum()) + sum(1 for _, q in s.scheduler.history if q == p)
            assert s.pages.refcount(p) == expected, (i, p)
    assert s.prompt_index == 29            # the last one is due at block 30


def test_bad_switches():
    stream = MODEL.default_stream()
    s = Streamer(TorchBackend(build_models(MODEL, seed=0), stream), MODEL.dit, stream, PROMPT0, seed=0)
    with pytest.raises(DysinkError, match="of shape"):
        s.switch_prompt(np.zeros((3, 3), np.float32), 3)
    s.switch_prompt(PROMPT0, 9)
    with pytest.raises(DysinkError, match="non-decreasing"):
        s.switch_prompt(PROMPT0, 6)
    fixed = MODEL.default_stream(sink_size=3)
    s = Streamer(TorchBackend(build_models(MODEL, seed=0), fixed), MODEL.dit, fixed, PROMPT0, seed=0)
    with pytest.raises(DysinkError, match="fixed sink"):
        s.switch_prompt(PROMPT0, 3)


def _schedule(tmp_path, entries):
    import json

    from safetensors.numpy import save_file

    for name, seed in (("a", 77), ("b", 78)):
        save_file({"prompt_embeds": default_prompt_embeds(MODEL, seed=seed)}, str(tmp_path / f"{name}.safetensors"))
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(entries))
    return path


def test_cli_prompt_schedule(tmp_path):
    import json

    from click.testing import CliRunner

    from dysink_deploy.cli.bench_cli import main as bench_main
    from dysink_deploy.runtime.cli import main

    schedule = _schedule(tmp_path, [{"frame": 0, "prompt_embeds": "a.safetensors"},
                                    {"frame": 4, "prompt_embeds": "b.safetensors"}])
    res = CliRunner().invoke(main, ["--quiet", "--blocks", "3", "--prompts", str(schedule), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    switches = [b["prompt_switch"] for b in stats["blocks"]]
    assert switches[0] is None and switches[1] is None      # frame 4: the first block starting at >= 4 is block 2
    assert switches[2]["prompt"] == 1 and switches[2]["frames_recached"] == 6
    assert (tmp_path / "o" / "timeline.png").stat().st_size > 0
    # The same run without the switch differs from block 2 on, and compare says where.
    single = _schedule(tmp_path, [{"frame": 0, "prompt_embeds": "a.safetensors"}])
    res = CliRunner().invoke(main, ["--quiet", "--blocks", "3", "--prompts", str(single), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(bench_main, ["compare", str(tmp_path / "o"), str(tmp_path / "p")])
    assert res.exit_code == 1 and "first: block 2" in res.output and "prompt_switch" in res.output


@pytest.mark.parametrize("entries, message", [
    ([{"frame": 0, "prompt": "a cat"}], "a text prompt needs --tokenizer DIR"),
    ([{"frame": 0, "prompt": "a cat", "prompt_embeds": "a.safetensors"}], "exactly one of prompt"),
    ([{"frame": 6, "prompt_embeds": "a.safetensors"}, {"frame": 3, "prompt_embeds": "b.safetensors"}],
     "frames must not decrease"),
    ([{"frame": 3, "prompt_embeds": "missing.safetensors"}], "does not exist"),
    ([{"frame": -1, "prompt_embeds": "a.safetensors"}], "frame must be an integer >= 0"),
    ([{"frame": 3, "embeds": "a.safetensors"}], "unknown key(s) embeds"),
    ([], "non-empty JSON list"),
])
def test_cli_bad_schedules(tmp_path, entries, message):
    from click.testing import CliRunner

    from dysink_deploy.runtime.cli import main

    res = CliRunner().invoke(main, ["--quiet", "--blocks", "2", "--prompts", str(_schedule(tmp_path, entries)),
                                    "--out", str(tmp_path / "o")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_cli_switch_needs_an_interactive_bundle(tmp_path, bundles):
    from click.testing import CliRunner

    from dysink_deploy.runtime.cli import main

    schedule = _schedule(tmp_path, [{"frame": 3, "prompt_embeds": "a.safetensors"}])
    res = CliRunner().invoke(main, ["--quiet", "--backend", "onnxruntime", "--bundle", str(bundles("fp32")),
                                    "--blocks", "2", "--prompts", str(schedule), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--interactive" in res.output and not (tmp_path / "o").exists()


def test_api_switch_prompt():
    from dysink_deploy import api

    with api.open_stream(model="tiny", settings=SETTINGS) as stream:
        list(stream.blocks(2))
        stream.switch_prompt(SWITCHES[0][1])
        block = stream.next_block()
        assert block.stats["prompt_switch"]["prompt"] == 1 and block.index == 2
