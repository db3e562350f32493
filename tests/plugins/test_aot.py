"""Ahead-of-time cubins: `dysink-export kernels` for the tiny preset on sm_87 and sm_90, checked
against its manifest (ELF magic, the named symbol, sha256, launch arguments), plus its refusals."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dysink_deploy.config import model_preset
from dysink_deploy.errors import DysinkError
from dysink_deploy.plugins import aot

EXE = [sys.executable, "-m", "dysink_deploy.cli.export_cli"]


def _run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("k") / "tiny-kernels"
    res = _run("kernels", "--model", "tiny", "--arch", "87,90", "--out", str(out), "--report")
    assert res.returncode == 0, res.stderr + res.stdout
    return out, res.stdout


def test_manifest_matches_cubins(kernel_dir):
    out, _ = kernel_dir
    manifest = json.loads((out / "kernels.json").read_text())
    assert manifest["archs"] == [87, 90] and manifest["triton_version"]
    # Which ptxas built each architecture (sm_90 and older: TRITON_PTXAS_PATH's; unset here: Triton's own).
    assert {k: v["variable"] for k, v in manifest["ptxas"].items()} == {"sm87": "TRITON_PTXAS_PATH",
                                                                       "sm90": "TRITON_PTXAS_PATH"}
    assert all(Path(v["path"]).is_file() and v["version"] for v in manifest["ptxas"].values())
    kernels = manifest["kernels"]
    # Every kernel every op launches, for every architecture and every precision.
    for arch in (87, 90):
        names = {(e["kernel"], e["key"].get("dtype")) for e in kernels if e["arch"] == arch}
        for op in manifest["ops"].values():
            for kernel in op["launch"]:
                dtypes = {d for k, d in names if k == kernel}
                assert dtypes, (arch, kernel)
        assert {d for k, d in names if k == "paged_attention"} == {"float32", "float16", "bfloat16"}
    for e in kernels:
        blob = (out / e["file"]).read_bytes()
        assert blob[:4] == b"\x7fELF", e["file"]
        assert e["symbol"].encode() + b"\x00" in blob, f"{e['symbol']} not in {e['file']}"
        assert hashlib.sha256(blob).hexdigest() == e["sha256"] and len(blob) == e["bytes"]
        assert [a["name"] for a in e["args"][-2:]] == ["global_scratch", "profile_scratch"]
        assert all(a["type"] != "constexpr" for a in e["args"])
        assert e["threads"] == 32 * e["num_warps"] and e["shared_bytes"] >= 0
        assert e["ptxas"]["registers"] and e["ptxas"]["spill_stores"] == 0, e["variant"]
        assert e["launch"] == {"num_ctas": 1, "cooperative": False, "pdl": False, "tensor_descriptors": 0}
    # The attention kernel's launch arguments in order (what the plugin passes).
    attn = next(e for e in kernels if e["kernel"] == "paged_attention")
    assert [a["name"] for a in attn["args"]][:9] == ["q", "k_cur", "v_cur", "k_pool", "v_pool", "local_ids",
                                                      "sink_ids", "ratios", "out"]
    assert aot.load_manifest(out)["kernels"] == kernels


def test_report_lists_every_cubin(kernel_dir):
    out, stdout = kernel_dir
    n = len(json.loads((out / "kernels.json").read_text())["kernels"])
    rows = [line for line in stdout.splitlines() if line.startswith("sm_")]
    assert len(rows) == n
    assert all(line.rstrip().endswith("yes") for line in rows if "paged_attention.dtype-bfloat16" in line)
    assert stdout.rstrip().splitlines()[-1].startswith("PASSED")


def test_tampered_cubin_is_refused(kernel_dir, tmp_path):
    out, _ = kernel_dir
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    victim = next((copy / "sm90").iterdir())
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.raises(DysinkError, match="does not match its sha256"):
        aot.load_manifest(copy)


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny", "--arch", "75"], "unknown architecture '75'"),
    (["--model", "tiny", "--arch", ","], "--arch is empty"),
    (["--arch", "90"], "exactly one of --bundle or --model"),
    (["--model", "tiny", "--bundle", "x"], "exactly one of --bundle or --model"),
    (["--bundle", "does-not-exist"], "does-not-exist"),
])
def test_bad_arguments(tmp_path, args, message):
    res = _run("kernels", *args, "--out", str(tmp_path / "k"))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "k").exists()


def test_report_alone_compiles_into_a_temporary_folder(tmp_path):
    res = _run("kernels", "--model", "tiny", "--precision", "fp16", "--arch", "90", "--report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("sm_90 ") for line in res.stdout.splitlines())
    assert res.stdout.rstrip().splitlines()[-1].startswith("PASSED")
    assert list(tmp_path.iterdir()) == []
    res = _run("kernels", "--model", "tiny", "--arch", "90", cwd=tmp_path)
    assert res.returncode == 2 and "give --out DIR" in res.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variable, arch", [("TRITON_PTXAS_PATH", "87"), ("TRITON_PTXAS_BLACKWELL_PATH", "110")])
def test_a_ptxas_path_that_does_not_work_is_an_error(tmp_path, monkeypatch, variable, arch):
    """Triton would quietly fall back to its bundled ptxas; the export says so and stops."""
    monkeypatch.setenv(variable, str(tmp_path / "no-such" / "ptxas"))
    res = _run("kernels", "--model", "tiny", "--arch", arch, "--out", str(tmp_path / "k"))
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and f"{variable}={tmp_path / 'no-such' / 'ptxas'} is not a working ptxas" in last
    assert "Traceback" not in res.stderr and not (tmp_path / "k").exists()


def test_existing_out_is_not_replaced_without_overwrite(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "keep.txt").write_text("mine")
    res = _run("kernels", "--model", "tiny", "--arch", "90", "--out", str(tmp_path / "k"))
    assert res.returncode == 2 and "already exists" in res.stderr
    with pytest.raises(DysinkError, match="not a kernel directory"):
        aot.compile_kernels(model_preset("tiny"), model_preset("tiny").default_stream(), ["fp32"], [90],
                            tmp_path / "k", overwrite=True)
    assert (tmp_path / "k" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["k"], "no partial directory left behind"


def test_integer_arguments_are_never_specialized():
    """Triton's JIT compiles an integer argument equal to 1 as a constant (and `.to()` on it then
    fails to compile): a one-token block, one head or one sink must take the general kernel, as
    the ahead-of-time cubins (plain i32 arguments) do."""
    with aot._compile_mode() as modules:
        for kernel, args in aot.ARG_TYPES.items():
            fn = getattr(modules[aot.KERNEL_MODULE[kernel]], kernel)
            ints = sorted(name for name, ty in args.items() if ty == "i32")
            assert sorted(p.name for p in fn.params if p.do_not_specialize) == ints, kernel


def test_plugin_launches_pass_each_kernel_its_arguments_in_order():
    """The C++ plugins' ArgLists (plugins/cpp/src/*_plugin.cpp) name, in order, the arguments of each kernel
    as ARG_TYPES lists them (P included): a mismatch would only show on a GPU, as a refused launch."""
    import re

    src = Path(__file__).resolve().parents[2] / "plugins" / "cpp" / "src"
    names = {"q": "q", "kCur": "k_cur", "vCur": "v_cur", "kPool": "k_pool", "vPool": "v_pool",
             "localIds": "local_ids", "sinkIds": "sink_ids", "partial": "partial", "ratios": "ratios", "out": "out",
             "mThreshold": "threshold", "smScale": "sm_scale", "mTokens": "L", "mHeads": "H", "mLocal": "n_local",
             "mSink": "n_sink", "mFixedSinks": "fixed_sinks", "perSplit": "tokens_per_split", "mPages": "P",
             "scoresWs": "scores_ws", "slots": "slots", "top": "top_scores", "mCapacity": "C", "mFeat": "F",
             "mQueries": "Q", "mSinkSize": "sink_size", "mK": "k",
             "kScale": "k_scale", "vScale": "v_scale"}      # added for 8-bit pages only (ARG_TYPES: constexpr else)
    inputs = {"retrieve_sinks_plugin.cpp": ["bank_feats", "bank_start", "queries", "query_valid", "current_start",
                                            "window_frames"]}
    launches = {}
    for file, kernels in (("gated_sink_attention_plugin.cpp", {"mPartial": "gate_partial_sums",
                                                                "mDecide": "gate_decide",
                                                                "mAttention": "paged_attention"}),
                          ("retrieve_sinks_plugin.cpp", {"mScores": "retrieve_scores", "mTopk": "retrieve_topk"})):
        text = (src / file).read_text()
        for var, body, loaded in re.findall(r"ArgList (\w+);(.*?)launchKernel\((\w+),", text, re.S):
            args = []
            for name in re.findall(rf"(?:\b{var}\s*)?\.add\(&(\w+)(?:\[i\])?\)", body):
                args += inputs[file] if name == "ptr" else [names[name]]
            launches[kernels[loaded]] = args
    assert launches == {kernel: list(args) for kernel, args in aot.ARG_TYPES.items()}
