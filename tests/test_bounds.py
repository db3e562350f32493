"""One bound and one clear line for every count, length, port and thread number (issue 22, "values
that pass and mean nothing"): main took 10**9 blocks, --seconds 1e300 (a 400-digit block count),
--threads 100000, a flag given as 1 or "no", bench flags such as --warmup -1, --tolerance nan and
--streams a,b, a port beyond 65535 on dysink-client, a window or block whose attention scores need
more memory than the machine has (the planner counted only the pages), and prompt switches past the
run's last block or two in one block (they slipped or vanished without a word). The bounds are in
dysink_deploy/limits.py; RunSpec, the CLIs and the planner read them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.builder import resolve_run
from dysink_deploy.runtime.spec import RunSpec

EMB = np.zeros((512, 4096), np.float32)


def _one_error_line(res, needle: str) -> None:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output


def _refused(needle: str, **fields) -> str:
    with pytest.raises(DysinkError) as info:
        resolve_run(RunSpec(model="tiny", **fields))
    text = str(info.value)
    assert needle in text and "\n" not in text, text
    return text


# -- RunSpec: blocks, seconds, threads, flags -------------------------------------------------------
@pytest.mark.parametrize("fields, needle", [
    ({"blocks": 10_001}, "RunSpec.blocks must be an integer in 1..10000, got 10001"),
    ({"blocks": 10 ** 9}, "RunSpec.blocks must be an integer in 1..10000, got 1000000000"),
    ({"seconds": 1e300}, "RunSpec.seconds must be a finite number in (0, 7499.8125], got 1e+300"),
    ({"seconds": 7499.9}, "RunSpec.seconds must be a finite number in (0, 7499.8125], got 7499.9"),
    ({"threads": 100_000}, "RunSpec.threads must be an integer in 1..1024, got 100000"),
    ({"threads": True}, "RunSpec.threads must be an integer in 1..1024, got True"),
    ({"use_ema": 1}, "RunSpec.use_ema must be True or False, got 1"),
    ({"cuda_graph": "no"}, "RunSpec.cuda_graph must be True or False, got 'no'"),
])
def test_runspec_bounds(fields, needle):
    _refused(needle, **fields)


def test_the_bounds_are_exact():
    assert resolve_run(RunSpec(model="tiny", blocks=10_000, threads=1024)).blocks == 10_000
    assert resolve_run(RunSpec(model="tiny", seconds=7499.8125)).blocks == 10_000      # 9 + 12 * 9999 frames
    _refused("got 7499.8126", seconds=7499.8126)
    _refused("got 1025", threads=1025)


def test_seconds_with_small_blocks_are_bounded_after_the_conversion():
    # block_frames 1: 4 video frames a block; 7000 s * 16 fps = 112,000 frames -> 28,001 blocks
    _refused("RunSpec.seconds 7000 needs 28001 blocks of 1 latent frame(s), more than 10000", seconds=7000,
             settings={"block_frames": 1, "local_attn_size": 3})


@pytest.mark.parametrize("args, needle", [
    (["--seconds", "1e300"], "--seconds must be a finite number in (0, 7499.8125], got 1e+300"),
    (["--blocks", "100000"], "--blocks must be an integer in 1..10000, got 100000"),
    (["--threads", "100000"], "--threads must be an integer in 1..1024, got 100000"),
    (["--blocks", "1", "--dump-block", "-1", "DUMP"], "--dump-block -1: the run has only 1 blocks"),
])
def test_dysink_run_refuses_in_one_line(tmp_path, args, needle):
    args = [str(tmp_path / "dump") if a == "DUMP" else a for a in args]
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--model", "tiny", "--out", str(tmp_path / "out"), *args],
                             catch_exceptions=False)
    _one_error_line(res, needle)
    assert not (tmp_path / "out").exists()


# -- dysink-bench flags --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["stream", "--blocks", "2", "--warmup", "-1"], "--warmup must be an integer in 0..1, got -1"),
    (["stream", "--blocks", "3", "--warmup", "3"], "--warmup must be an integer in 0..2, got 3"),
    (["stream", "--blocks", "100000"], "--blocks must be an integer in 1..10000, got 100000"),
    (["stream", "--blocks", "3", "--threads", "100000"], "--threads must be an integer in 1..1024, got 100000"),
    (["memory", "--blocks", "4", "--measure-block", "2", "--tolerance", "nan"],
     "--tolerance must be a finite number in [0, 10], got nan"),
    (["memory", "--blocks", "4", "--measure-block", "2", "--tolerance", "-0.1"],
     "--tolerance must be a finite number in [0, 10], got -0.1"),
    (["memory", "--blocks", "1000000"], "--blocks must be an integer in 2..10000, got 1000000"),
    (["soak", "--bundle", "NOPE", "--tolerance", "inf"], "--tolerance must be a finite number in [0, 10], got inf"),
    (["graphs", "--runs", "100000000"], "--runs must be an integer in 1..10000, got 100000000"),
    (["graphs", "--runs", "1", "--threads", "100000"], "--threads must be an integer in 1..1024, got 100000"),
    (["serve", "--bundle", "NOPE", "--streams", "a,b"], "--streams must be comma-separated stream counts such as "
                                                         "1,2,4, got 'a,b'"),
    (["serve", "--bundle", "NOPE", "--streams", "1,0"], "every --streams count must be an integer in 1..256, got 0"),
    (["serve", "--bundle", "NOPE", "--streams", "1," + "9" * 5000], "every --streams count must be an integer in "
                                                                    "1..256, got a 5000-digit number"),
    (["serve", "--bundle", "NOPE", "--blocks", "1"], "--blocks must be an integer in 2..10000, got 1"),
])
def test_bench_flags_are_checked_before_anything_runs(args, needle):
    from dysink_deploy.cli.bench_cli import main as bench_main

    _one_error_line(CliRunner().invoke(bench_main, args), needle)


# -- dysink-client: port and blocks before any connection ----------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--url", "127.0.0.1:99999"], "the port of --url '127.0.0.1:99999' must be an integer in 1..65535, got 99999"),
    (["--url", "127.0.0.1:0"], "must be an integer in 1..65535, got 0"),
    (["--url", "localhost"], "--url 'localhost' must be HOST:PORT"),
    (["--blocks", "20000"], "--blocks must be an integer in 1..10000, got 20000"),
])
def test_client_refuses_before_connecting(tmp_path, args, needle):
    from dysink_deploy.serving.cli import client_main

    res = CliRunner().invoke(client_main, ["--out", str(tmp_path / "o"), *args])
    _one_error_line(res, needle)
    assert not (tmp_path / "o").exists()


def test_port_of_url_reads_ipv6_and_names():
    from dysink_deploy.limits import port_of_url

    assert port_of_url("[::1]:8001") == 8001 and port_of_url("example.org:65535") == 65535


# -- the planner: attention that holds its scores --------------------------------------------------------
def test_attention_scores_by_hand():
    from dysink_deploy.config import model_preset
    from dysink_deploy.runtime.plan import attention_scores_bytes

    m = model_preset("wan2.1-t2v-1.3b")
    # 480x832: 30 x 52 patches a frame, 4680 tokens a block. Keys: 2 sink slots + 4 local slots (the
    # widest window, an empty bank: 9 + 3 * 2 frames less the current block) + the current block =
    # 7 pages = 32,760 keys; 12 heads of 128: 4 bytes * (2 * 12 * 4680 * 32760 + 2 * 2 * 32760 * 12 * 128)
    assert attention_scores_bytes(m, m.default_stream()) == 4 * (3_679_603_200 + 201_277_440)     # 15.5 GB


def _fake_memory(monkeypatch, gb: float = 24):
    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": int(gb * 10 ** 9)})())


@pytest.mark.parametrize("settings, needle", [
    # a 300,000-frame window: 100,018 pages of 73,728 bytes = 7.4 GB (main: "fits" 24 GB), and float32
    # scores over (2 + 100,001 + 1) * 72 = 7,200,288 keys: 4 * (2 * 2 * 72 + 2 * 2 * 64) * 7,200,288 = 15.7 GB,
    # + the gate's 0.2 GB and the 1.5 GB reserve
    ({"local_attn_size": 300_000}, "this stream needs about 24.8 GB"),
    # 900-frame blocks: 21 pages of 22 MB (0.5 GB), but 21,600 tokens over 7 * 21,600 keys: 52.4 GB of scores
    ({"block_frames": 900, "local_attn_size": 2700}, "this stream needs about 5"),
])
def test_windows_and_blocks_whose_scores_do_not_fit_are_refused(monkeypatch, settings, needle):
    from dysink_deploy.runtime.builder import check_memory

    _fake_memory(monkeypatch)
    run = resolve_run(RunSpec(model="tiny", settings=settings))
    with pytest.raises(DysinkError, match=needle.replace(".", r"\.")):
        check_memory(run.model, run.stream, "fp32", RunSpec(model="tiny"))        # torch on the CPU: the reference


def test_which_backends_hold_scores(monkeypatch):
    from dysink_deploy.runtime.builder import materialises_scores

    assert materialises_scores(RunSpec(model="tiny"))                              # the reference op on the CPU
    assert materialises_scores(RunSpec(model="tiny", kernels="reference", device="cuda"))
    assert not materialises_scores(RunSpec(model="tiny", device="cuda"))           # Triton kernels
    assert materialises_scores(RunSpec(backend="onnxruntime", bundle="b"))         # the ONNX function body
    assert not materialises_scores(RunSpec(backend="tensorrt", bundle="b"))        # the plugin


# -- prompt switches against the run ---------------------------------------------------------------------
@pytest.mark.parametrize("fields, needle", [
    ({"blocks": 4, "prompts": [(4, EMB), (5, EMB)]},
     "RunSpec.prompts: the switches at latent frames 4 and 5 both fall in block 2"),
    ({"prompts": [(0, EMB), (0, EMB)]}, "the switches at latent frames 0 and 0 both fall in block 0"),
    ({"blocks": 2, "prompts": [(100, EMB)]},
     "the switch at latent frame 100 would apply at block 34, past the run's last block 1 (2 blocks: latent frames "
     "0..5); give RunSpec.blocks 35 or more"),
    ({"blocks": 4, "prompts": [(10, EMB)]}, "would apply at block 4, past the run's last block 3"),
    ({"prompts": [(True, EMB)]}, "RunSpec.prompts: a switch frame must be an integer >= 0 (a latent frame), got True"),
    ({"prompts": [("abc", EMB)]}, "a switch frame must be an integer >= 0 (a latent frame), got 'abc'"),
    ({"prompts": [(2.5, EMB)]}, "got 2.5"),
])
def test_switches_are_checked_against_the_run(fields, needle):
    _refused(needle, **fields)


def test_switches_in_blocks_of_their_own_pass_and_an_open_stream_has_no_last_block():
    run = resolve_run(RunSpec(model="tiny", blocks=4, prompts=[(3, EMB), (6, EMB), (9, EMB)]))   # blocks 1, 2, 3
    assert [f for f, _ in run.switches] == [3, 6, 9]
    _refused("the switches at latent frames 7 and 9 both fall in block 3", blocks=4,      # ceil(7 / 3) = 3
             prompts=[(3, EMB), (7, EMB), (9, EMB)])
    assert resolve_run(RunSpec(model="tiny", prompts=[(300, EMB)])).switches      # the API's stream goes on


def _schedule(tmp_path, frames) -> str:
    from safetensors.numpy import save_file

    save_file({"prompt_embeds": EMB}, str(tmp_path / "p.safetensors"))
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps([{"frame": f, "prompt_embeds": "p.safetensors"} for f in frames]))
    return str(path)


def test_dysink_run_checks_a_schedule_against_its_default_length(tmp_path):
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--model", "tiny", "--prompts", _schedule(tmp_path, [0, 60]),
                                            "--out", str(tmp_path / "out")], catch_exceptions=False)
    _one_error_line(res, "--prompts: the switch at latent frame 60 would apply at block 20, past the run's last "
                         "block 11 (12 blocks: latent frames 0..35); give --blocks 21 or more")
    assert not (tmp_path / "out").exists()


def test_a_schedule_with_two_prompts_at_frame_0_is_refused(tmp_path):
    _refused("the switches at latent frames 0 and 0 both fall in block 0", prompts=_schedule(tmp_path, [0, 0, 6]))


def test_a_second_runtime_switch_in_one_block_is_refused():
    """Stream.switch_prompt during a stream: two switches landing in one block are refused in one
    line (before: the second slipped to the next block without a word)."""
    import numpy as np

    from dysink_deploy import api

    with api.open_stream(model="tiny") as stream:
        embeds = np.zeros((stream.model.dit.text_len, stream.model.dit.text_dim), dtype=np.float32)
        stream.switch_prompt(embeds, frame=4)            # block 2 (frames 6..8)
        with pytest.raises(DysinkError, match="two prompt switches in block 2 .*from 9 on"):
            stream.switch_prompt(embeds, frame=6)
        stream.switch_prompt(embeds, frame=9)            # block 3: fine
