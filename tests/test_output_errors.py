"""The output side (issue 22): a read-only target, `--out FILE/x`, a full disk during an export,
`dysink-run --dump-block` onto a file or through a symbolic link, `dysink-serve --log DIR`: each one
`error:` line (no traceback), nothing partial left, what was there before as it was.

A read-only file system and a full disk are simulated (this suite may run as root, for whom a
chmod 0555 folder is writable): the call that would fail raises the OSError the kernel gives.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.cli.export_cli import main as export_main  # noqa: E402
from dysink_deploy.runtime.cli import main as run_main  # noqa: E402
from tests.test_overwrite_ownership import fast_export, snapshot  # noqa: E402,F401 (a fixture)


def _invoke(main, *args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def _one_error_line(res, needle):
    """Exit 2 and one `error:` line, the last (progress lines of an export may come before it)."""
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert errors == lines[-1:] and needle in errors[0] and "Traceback" not in res.output, res.output
    assert all(ln.startswith("exported ") for ln in lines[:-1]), res.output


def _read_only(monkeypatch, folder: Path, name: str):
    """tempfile.`name` (mkdtemp / mkstemp) in `folder` fails as on a read-only file system."""
    real = getattr(tempfile, name)

    def refuse(*args, **kwargs):
        if Path(kwargs.get("dir") or tempfile.gettempdir()).resolve() == folder.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, name, refuse)


# ---------------------------------------------------------------------------
# dysink-export
# ---------------------------------------------------------------------------
def test_disk_full_during_an_export_keeps_the_previous_bundle(bundle_copy, fast_export):
    written = []

    def write(name, path):                  # the third graph finds the disk full half-way
        written.append(name)
        if len(written) == 3:
            path.write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    fast_export["write"] = write
    before = snapshot(bundle_copy)
    res = _invoke(export_main, "onnx", "--model", "tiny", "--out", bundle_copy, "--overwrite")
    _one_error_line(res, "No space left on device")
    assert f"--out {bundle_copy} is as it was" in res.output
    assert snapshot(bundle_copy) == before      # the complete bundle stays, nothing beside it


def test_a_read_only_target_is_one_line(tmp_path, fast_export, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro, "mkdtemp")
    res = _invoke(export_main, "onnx", "--model", "tiny", "--graph", "retrieve", "--out", ro / "b")
    _one_error_line(res, "Read-only file system")
    assert list(ro.iterdir()) == []


def test_encode_prompt_into_a_read_only_folder_is_one_line(umt5_tokenizer, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro, "mkstemp")
    res = _invoke(export_main, "encode-prompt", "--prompt", "a cat", "--tokenizer", umt5_tokenizer,
                  "--out", ro / "e.safetensors")
    _one_error_line(res, "Read-only file system writing --out")
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", ["onnx", "trt-onnx", "encode-prompt"])
def test_out_under_a_regular_file_is_one_line(bundles, tmp_path, fast_export, command):
    file = tmp_path / "file"
    file.write_text("a file\n")
    args = {"onnx": ["onnx", "--model", "tiny", "--graph", "retrieve", "--out", file / "x"],
            "trt-onnx": ["trt-onnx", "--bundle", bundles("fp32"), "--graph", "retrieve", "--out", file / "x"],
            "encode-prompt": ["encode-prompt", "--prompt", "a cat", "--tokenizer", tmp_path,
                              "--out", file / "x.safetensors"]}[command]
    res = _invoke(export_main, *args)
    _one_error_line(res, f"{file} is a file, not a directory")
    assert file.read_text() == "a file\n" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------------------
# dysink-run --dump-block
# ---------------------------------------------------------------------------
def _run(tmp_path, dump_dir):
    return _invoke(run_main, "--quiet", "--model", "tiny", "--backend", "torch", "--threads", "1", "--blocks", "1",
                   "--dump-block", "0", dump_dir, "--out", tmp_path / "o")


@pytest.mark.parametrize("kind, needle", [("file", "exists and is not a directory"),
                                          ("link", "is a symbolic link; give the real directory"),
                                          ("under a file", "is a file, not a directory")])
def test_dump_block_onto_a_file_or_through_a_link_is_refused(tmp_path, kind, needle):
    file, elsewhere = tmp_path / "file", tmp_path / "elsewhere"
    file.write_text("keep\n")
    elsewhere.mkdir()
    target = {"file": file, "link": tmp_path / "link", "under a file": file / "dump"}[kind]
    if kind == "link":
        target.symlink_to(elsewhere, target_is_directory=True)
    res = _run(tmp_path, target)
    _one_error_line(res, needle)
    assert file.read_text() == "keep\n" and list(elsewhere.iterdir()) == []
    assert not (tmp_path / "o").exists(), "refused before the run began"


def test_dump_block_disk_full_keeps_whole_steps_only(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from dysink_deploy.runtime import dump

    real, saved = dump.np.save, []

    def save(path, arr):                     # the disk fills during step 1's third array
        saved.append(path)
        if os.path.basename(os.path.dirname(path)) == "step1" and len([p for p in saved if "step1" in p]) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path, arr)
    monkeypatch.setattr(dump.np, "save", save)
    res = _run(tmp_path, tmp_path / "dump")
    _one_error_line(res, "No space left on device")
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["meta.json", "step0"]
    assert '"steps": 1' in (tmp_path / "dump" / "meta.json").read_text()


# ---------------------------------------------------------------------------
# dysink-serve --log
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a shell-script stand-in for tritonserver")
@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_serve_log_that_cannot_be_a_file_is_one_line(tmp_path, kind):
    from dysink_deploy.serving.cli import serve_main

    binary, repo, started = tmp_path / "tritonserver", tmp_path / "repo", tmp_path / "started"
    binary.write_text(f"#!/bin/sh\ntouch {started}\nexit 1\n")
    binary.chmod(0o755)
    repo.mkdir()
    (repo / "dysink_repo.json").write_text("{}")
    (tmp_path / "file").write_text("keep\n")
    log = {"directory": tmp_path, "under a file": tmp_path / "file" / "server.log"}[kind]
    res = _invoke(serve_main, "--repo", repo, "--tritonserver", binary, "--grpc-port", "0", "--http-port", "0",
                  "--log", log)
    _one_error_line(res, "is a directory; give a file path" if kind == "directory" else "is a file, not a directory")
    assert not started.exists() and (tmp_path / "file").read_text() == "keep\n"
