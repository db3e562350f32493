"""Hostile and careless inputs (issue 9): each gives exit code 2, one `error:` line, no traceback, and
leaves what was on disk as it was. Table-driven: one row per finding fixed here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.export_cli import main as export_main
from dysink_deploy.runtime import cli as run_cli


def _run(*args):
    blocks = [] if "--seconds" in map(str, args) else ["--blocks", "1"]
    return CliRunner().invoke(run_cli.main, ["--quiet", "--model", "tiny", *blocks, *map(str, args)],
                              catch_exceptions=False)


def _one_error_line(res, needle):
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert "Traceback" not in res.output


def _config(tmp_path, text: str | bytes) -> Path:
    path = tmp_path / "settings.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("args, needle", [
    (["--seconds", "inf"], "--seconds must be a finite number in (0, 7499.8125]"),
    (["--seconds", "nan"], "--seconds must be a finite number in (0, 7499.8125]"),
    (["--seed", "-1"], "--seed must lie in 0..2**63-1"),
    (["--weights-seed", str(2 ** 70)], "--weights-seed must lie in 0..2**63-1"),
    (["--device", "banana"], "--device must be cpu, cuda or cuda:N"),
])
def test_bad_numbers_and_names(tmp_path, args, needle):
    out = tmp_path / "out"
    res = _run("--out", out, *args)
    _one_error_line(res, needle)
    assert not out.exists(), "nothing is created for a refused run"


@pytest.mark.parametrize("text, needle", [
    ('{"gate_threshold": "0.5"}', ": gate_threshold must be a finite number, got '0.5'"),   # the file's key
    ('{"gate_threshold": null}', ": gate_threshold must be a finite number, got None"),
    ('{"shift": "abc"}', ": shift must be a finite number"),
    ('{"shift": Infinity}', "shift is the non-finite number Infinity"),
    ('{"denoising_steps": 5}', ": denoising_steps must be a list of integers"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not UTF-8 text"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bad_config_files(tmp_path, text, needle):
    res = _run("--out", tmp_path / "out", "--config", _config(tmp_path, text))
    _one_error_line(res, needle)


def test_config_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "dysink_deploy.runtime.cli", "--model", "tiny", "--blocks", "1",
                           "--config", str(fifo), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_symlinked_output_is_not_written_through(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "precious.mp4"
    out.mkdir()
    victim.write_bytes(b"do not overwrite")
    before = _digest(victim)
    (out / "video.mp4").symlink_to(victim)
    for extra in ([], ["--overwrite"]):
        _one_error_line(_run("--out", out, *extra), "video.mp4 is a symbolic link")
    assert _digest(victim) == before
    link = tmp_path / "link-out"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _one_error_line(_run("--out", link), "is a symbolic link; give the real directory")


def test_second_run_on_the_same_out_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".dysink-run.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242")
        holder.flush()
        _one_error_line(_run("--out", out), "is in use by another dysink-run (pid 4242)")
    assert not (out / "video.mp4").exists()


def test_overwrite_replaces_only_this_projects_outputs(tmp_path):
    out = tmp_path / "out"
    res = _run("--out", out)
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("mine")
    (out / "timeline.png").unlink()            # an earlier run's partial set: stale files go at start
    res = _run("--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine"
    assert {p.name for p in out.iterdir()} >= {"video.mp4", "stats.json", "timeline.png", "notes.txt"}


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_export_overwrite_refuses_what_is_not_a_bundle(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "directory":
        target.mkdir()
        (target / "unrelated.txt").write_text("keep me")
    else:
        target.write_text("keep me")
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--out", str(target), "--overwrite"])
    _one_error_line(res, "is not a bundle (no bundle.json)")
    assert (target / "unrelated.txt" if kind == "directory" else target).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_stale_partials_of_dead_exports_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".b.partial-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "retrieve.onnx").write_bytes(b"half")
    live = tmp_path / f".b.partial-{os.getpid()}-efgh"      # a live process's partial stays
    live.mkdir()
    from dysink_deploy.atomic import remove_stale_partials

    assert remove_stale_partials(tmp_path / "b") == [stale]
    assert not stale.exists() and live.exists()


def test_bench_threads_must_be_positive():
    from dysink_deploy.cli.bench_cli import main as bench_main

    res = CliRunner().invoke(bench_main, ["stream", "--threads", "-3", "--blocks", "3"])
    _one_error_line(res, "--threads must be an integer in 1..1024, got -3")


def test_stats_json_is_strict_json(tmp_path):
    out = tmp_path / "out"
    assert _run("--out", out).exit_code == 0
    json.loads((out / "stats.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_truncated_graph_with_a_matching_checksum_is_one_line(bundles, tmp_path):
    import shutil

    from dysink_deploy.bundle import MANIFEST_NAME, sha256_file

    path = tmp_path / "b"
    shutil.copytree(bundles("fp32"), path)
    graph = path / "retrieve.onnx"
    graph.write_bytes(graph.read_bytes()[:200])
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["graphs"]["retrieve"].update(sha256=sha256_file(graph), bytes=graph.stat().st_size)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    res = CliRunner().invoke(run_cli.main, ["--quiet", "--backend", "onnxruntime", "--bundle", str(path), "--blocks",
                                            "1", "--out", str(tmp_path / "out")], catch_exceptions=False)
    _one_error_line(res, "ONNX Runtime cannot load graph retrieve")
    assert not (tmp_path / "out").exists()


def test_a_stream_that_cannot_fit_is_refused_before_allocating(tmp_path):
    import time

    t0 = time.perf_counter()
    res = _run("--out", tmp_path / "out", "--height", "16000", "--width", "16000")
    _one_error_line(res, "this stream needs about")
    assert "dysink-export plan --model tiny --precision fp32 --memory" in res.output   # names the options that fit
    assert time.perf_counter() - t0 < 60, "refused from the estimate, not after trying"
    assert not (tmp_path / "out").exists()


def test_soak_arguments(bundles):
    from dysink_deploy.cli.bench_cli import main as bench_main

    res = CliRunner().invoke(bench_main, ["soak", "--bundle", str(bundles("fp32")), "--blocks", "10",
                                          "--measure-block", "10"])
    _one_error_line(res, "--measure-block must lie between 0 and --blocks")


def test_bench_graphs_threads_must_be_positive():
    from dysink_deploy.cli.bench_cli import main as bench_main

    res = CliRunner().invoke(bench_main, ["graphs", "--threads", "-3", "--runs", "1"])
    _one_error_line(res, "--threads must be an integer in 1..1024, got -3")


def test_export_overwrite_of_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(export_main, ["onnx", "--model", "tiny", "--out", ".", "--overwrite"])
    _one_error_line(res, "--out . is not a bundle (no bundle.json)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


class _Payload:
    """Unpickling this would run a shell command: weights_only=True must refuse it and say why."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_runs_code_is_refused_with_its_reason(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"generator": _Payload()}, evil)
    before = _digest(evil)
    from safetensors.numpy import save_file

    from dysink_deploy.config import model_preset
    from dysink_deploy.runtime.prompts import default_prompt_embeds

    save_file({"prompt_embeds": default_prompt_embeds(model_preset("tiny"))}, str(tmp_path / "p.safetensors"))
    for cli, args in ((run_cli.main, ["--quiet", "--model", "tiny", "--blocks", "1", "--checkpoint", str(evil),
                                      "--prompt-embeds", str(tmp_path / "p.safetensors"),
                                      "--out", str(tmp_path / "out")]),
                      (export_main, ["verify-checkpoint", "--model", "tiny", "--checkpoint", str(evil)])):
        res = CliRunner().invoke(cli, args)
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert res.exit_code != 0 and "Traceback" not in res.output
        text = " ".join(lines)
        assert "weights_only" in text and "system" in text, res.output     # the unsupported global is named
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()
    assert _digest(evil) == before


def test_every_missing_file_in_one_line(tmp_path):
    res = _run("--out", tmp_path / "o", "--checkpoint", tmp_path / "a.pt", "--vae", tmp_path / "b.pth",
               "--prompt-embeds", tmp_path / "c.safetensors")
    _one_error_line(res, "these files do not exist: --checkpoint")
    assert "--vae" in res.output and "--prompt-embeds" in res.output
