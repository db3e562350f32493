"""A bundle's manifest can name only regular files inside the bundle: hostile manifests are refused in
one line before any file is opened or hashed, with the same message whether or not the outside file
exists (issue 9, "bundle paths confined")."""

from __future__ import annotations

import os
import shutil

import pytest

# The tiny bundle these tests load is exported with onnxscript and checked with onnxruntime.
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.bundle import MANIFEST_NAME, Bundle, sha256_file  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402


from tests.conftest import edit_manifest as _edit  # noqa: E402


@pytest.fixture
def copy(bundle_copy):
    return bundle_copy


def _refusal(path) -> str:
    with pytest.raises(DysinkError) as info:
        Bundle.load(path)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_parent_relative_path_with_a_matching_checksum(copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(copy / "retrieve.onnx", outside / "x.onnx")
    _edit(copy, lambda m: m["graphs"]["retrieve"].update(file="../outside/x.onnx"))
    assert "'../outside/x.onnx', which is not a plain path inside the bundle" in _refusal(copy)


@pytest.mark.parametrize("name", ["/etc/passwd", "/nonexistent/file", "", "a\\..\\b"])
def test_absolute_and_odd_paths_same_message_whether_they_exist_or_not(copy, name):
    _edit(copy, lambda m: m["graphs"]["retrieve"].update(file=name))
    assert "which is not a plain path inside the bundle" in _refusal(copy)


def test_external_data_outside_and_malformed(copy):
    _edit(copy, lambda m: m["graphs"]["dit_step"].update(external_data=[
        {"file": "/etc/shadow", "sha256": "0" * 64, "bytes": 1}]))
    assert "'/etc/shadow', which is not a plain path" in _refusal(copy)
    _edit(copy, lambda m: m["graphs"]["dit_step"].update(external_data=[{"file": "dit_step.onnx.data"}]))
    assert "malformed external_data of graph dit_step" in _refusal(copy)


def test_symlinks_are_refused(copy, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "retrieve.onnx", target)
    os.symlink(target, copy / "retrieve.onnx")
    assert "retrieve.onnx (graph retrieve) is a symbolic link" in _refusal(copy)
    os.remove(copy / "retrieve.onnx")
    shutil.move(target, copy / "retrieve.onnx")
    real = tmp_path / "real.json"
    shutil.move(copy / MANIFEST_NAME, real)
    os.symlink(real, copy / MANIFEST_NAME)
    assert f"{MANIFEST_NAME} is a symbolic link" in _refusal(copy)


def test_a_fifo_is_not_a_graph_file(copy):
    os.remove(copy / "retrieve.onnx")
    os.mkfifo(copy / "retrieve.onnx")
    assert "is not a regular file" in _refusal(copy)      # refused without opening it (would block)


def test_deeply_nested_manifest(copy):
    (copy / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _refusal(copy)


def test_the_untouched_copy_loads(copy):
    assert Bundle.load(copy).graphs["retrieve"].sha256 == sha256_file(copy / "retrieve.onnx")
