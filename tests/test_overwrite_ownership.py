"""`--overwrite` replaces only what the project wrote (issue 22): a user's file inside a bundle, a
trt-onnx folder or a kernel folder survives (the command refuses in one line naming it), a complete
bundle is not replaced by a partial one, the directory the user stands in is never replaced, two
exports to one --out do not both write it (the second is refused naming the first), and
`encode-prompt --overwrite` replaces only an embeddings file.

The exports here run `export_onnx` with torch's exporter swapped for a copy of the shared tiny fp32
bundle's graph files (`fast_export`): the checks, the lock, the writes and the swap are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dysink_deploy.atomic import staged_directory  # noqa: E402
from dysink_deploy.bundle import Bundle  # noqa: E402
from dysink_deploy.cli.export_cli import main as export_main  # noqa: E402
from dysink_deploy.errors import DysinkError  # noqa: E402
from tests.conftest import edit_manifest  # noqa: E402


def _export(*args):
    return CliRunner().invoke(export_main, [*map(str, args)], catch_exceptions=False)


def _one_error_line(res, needle):
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` and beside it: path -> sha256 of a file, 'dir' or the link's target."""
    out = {}
    for root in (folder, folder.parent):
        for path in sorted(root.rglob("*") if root == folder else root.iterdir()):
            key = str(path.relative_to(folder.parent))
            if path.is_symlink():
                out[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[key] = "dir"
            else:
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def fast_export(bundles, monkeypatch):
    """export_onnx with the weights and torch's exporter replaced: each graph file is copied from the
    shared tiny fp32 bundle (same model, stream, precision). hooks["build"]() runs where the weights
    would be built, hooks["write"](name, path) before each graph is written."""
    from dysink_deploy.export import onnx_export as ox

    src = Path(bundles("fp32"))
    graphs = json.loads((src / "bundle.json").read_text())["graphs"]
    hooks: dict = {}

    class Stub:
        def to(self, *args, **kwargs):
            return self

        def eval(self):
            return self

    def build_models(*args, **kwargs):
        if "build" in hooks:
            hooks["build"]()
        return Stub()

    def export_graph(module, spec, args, path, opset=None, ir_version=None):
        path = Path(path)
        if "write" in hooks:
            hooks["write"](spec.name, path)
        shutil.copyfile(src / graphs[spec.name]["file"], path)
        return {"file": path.name, "external_data": [], "custom_ops": graphs[spec.name]["custom_ops"]}

    monkeypatch.setattr(ox, "build_models", build_models)
    monkeypatch.setattr(ox, "graph_module", lambda *args, **kwargs: Stub())
    monkeypatch.setattr(ox, "export_graph", export_graph)
    return hooks


# ---------------------------------------------------------------------------
# dysink-export onnx --overwrite
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("foreign", ["NOTES.txt", "mine/notes.md", "keep/"])
def test_a_users_file_in_the_bundle_is_never_deleted(bundle_copy, fast_export, foreign):
    # The bundle's own files: what its manifest lists (an engine too) and a dysink-export plugins folder.
    (bundle_copy / "plugins").mkdir()
    (bundle_copy / "plugins" / "libdysink_plugins.so").write_bytes(b"\x7fELF stand-in")
    (bundle_copy / "plugins" / "libdysink_plugins_autoreg.so").write_bytes(b"\x7fELF stand-in")
    (bundle_copy / "retrieve.engine").write_bytes(b"engine stand-in")
    edit_manifest(bundle_copy, lambda m: m.update(engines={"retrieve": {"file": "retrieve.engine"}}))
    target = bundle_copy / foreign
    if foreign.endswith("/"):
        target.mkdir()
    else:
        target.parent.mkdir(exist_ok=True)
        target.write_text("my notes about this bundle\n")
    before = snapshot(bundle_copy)
    res = _export("onnx", "--model", "tiny", "--out", bundle_copy, "--overwrite")
    _one_error_line(res, f"holds {foreign}, which dysink did not write")
    assert snapshot(bundle_copy) == before
    # Moved out, the rest is replaced, and no lock or partial is left beside it.
    (target.rmdir() if target.is_dir() else target.unlink())
    if target.parent != bundle_copy:
        target.parent.rmdir()
    res = _export("onnx", "--model", "tiny", "--out", bundle_copy, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "engines" not in Bundle.load(bundle_copy).manifest
    assert not (bundle_copy / "plugins").exists() and not (bundle_copy / "retrieve.engine").exists()
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == [bundle_copy.name]


def test_a_complete_bundle_is_not_replaced_by_a_partial_one(bundle_copy, fast_export):
    before = snapshot(bundle_copy)
    res = _export("onnx", "--model", "tiny", "--graph", "retrieve", "--out", bundle_copy, "--overwrite")
    _one_error_line(res, "a complete bundle is not replaced by a partial one")
    assert "dit_step" in res.output
    assert snapshot(bundle_copy) == before


@pytest.mark.parametrize("where", ["the bundle", "a folder in it"])
def test_never_the_directory_you_stand_in(bundle_copy, fast_export, monkeypatch, where):
    if where == "the bundle":
        monkeypatch.chdir(bundle_copy)
        out, needle = ".", "is the directory you are in"
    else:
        (bundle_copy / "plugins").mkdir()
        (bundle_copy / "plugins" / "libdysink_plugins.so").write_bytes(b"\x7fELF stand-in")
        monkeypatch.chdir(bundle_copy / "plugins")
        out, needle = "..", "is a folder above the directory you are in"
    before = snapshot(bundle_copy)
    res = _export("onnx", "--model", "tiny", "--out", out, "--overwrite")
    _one_error_line(res, needle)
    assert snapshot(bundle_copy) == before


def test_a_second_export_to_the_same_out_is_refused(tmp_path, fast_export):
    from dysink_deploy.export.onnx_export import export_onnx

    out = tmp_path / "b"
    started, release, calls, failures = threading.Event(), threading.Event(), [], []

    def build():                  # the first export waits inside its work, the second does not
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(60)
    fast_export["build"] = build

    def first():
        try:
            export_onnx("tiny", out=out, graphs=["retrieve"])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60)
        res = _export("onnx", "--model", "tiny", "--graph", "retrieve", "--out", out, "--overwrite")
    finally:
        release.set()
        thread.join(60)
    _one_error_line(res, f"is in use by another dysink-export onnx (pid {os.getpid()})")
    assert len(calls) == 1, "the second export began its work"
    assert not failures, failures
    assert Bundle.load(out, require=["retrieve"]).graphs.keys() == {"retrieve"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "a lock or partial was left"


# ---------------------------------------------------------------------------
# the other folders --overwrite replaces
# ---------------------------------------------------------------------------
def test_trt_onnx_overwrite_keeps_a_users_file(bundles, tmp_path):
    from dysink_deploy.export.trt_onnx import write_trt_onnx

    out = tmp_path / "trt"
    write_trt_onnx(bundles("fp32"), out, ["retrieve"])
    (out / "NOTES.txt").write_text("mine")
    before = snapshot(out)
    res = _export("trt-onnx", "--bundle", bundles("fp32"), "--graph", "retrieve", "--out", out, "--overwrite")
    _one_error_line(res, "holds NOTES.txt, which dysink did not write")
    assert snapshot(out) == before
    (out / "NOTES.txt").unlink()                # the control: only its own files, replaced
    res = _export("trt-onnx", "--bundle", bundles("fp32"), "--graph", "retrieve", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt"]


def test_kernel_and_plugin_folders_are_recognised_by_their_manifest(tmp_path):
    from dysink_deploy.plugins.aot import KERNEL_DIR_OWNED
    from dysink_deploy.plugins.build import plugin_dir_files

    plugins = tmp_path / "plugins"
    (plugins / "kernels" / "sm90").mkdir(parents=True)
    (plugins / "kernels" / "sm90" / "a.cubin").write_bytes(b"cubin")
    (plugins / "kernels" / "kernels.json").write_text(json.dumps({"kernels": [{"file": "sm90/a.cubin"}]}))
    (plugins / "libdysink_plugins.so").write_bytes(b"so")
    (plugins / "kernels" / "sm90" / "b.cubin").write_bytes(b"not listed")
    for out, owned, foreign in ((plugins / "kernels", KERNEL_DIR_OWNED, "sm90/b.cubin"),
                                (plugins, plugin_dir_files, "kernels/sm90/b.cubin")):
        before = snapshot(out)
        with pytest.raises(DysinkError, match=f"holds {foreign}, which dysink did not write"):
            with staged_directory(out, owned) as tmp:
                (tmp / "new").write_text("x")
        assert snapshot(out) == before
    (plugins / "kernels" / "sm90" / "b.cubin").unlink()
    with staged_directory(plugins, plugin_dir_files) as tmp:
        (tmp / "libdysink_plugins.so").write_bytes(b"new")
    assert sorted(p.name for p in plugins.iterdir()) == ["libdysink_plugins.so"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plugins"]


# ---------------------------------------------------------------------------
# dysink-export encode-prompt --overwrite
# ---------------------------------------------------------------------------
def _foreign_files(tmp_path: Path) -> dict:
    from safetensors.numpy import save_file

    text = tmp_path / "notes.safetensors"
    text.write_text("my notes, not an embedding\n")
    weights = tmp_path / "weights.safetensors"
    save_file({"weight": np.ones((4, 4), np.float32)}, str(weights))
    other = tmp_path / "other.safetensors"        # the right tensor, another writer's metadata
    save_file({"prompt_embeds": np.ones((4, 8), np.float32)}, str(other), metadata={"writer": "someone else"})
    return {"text": text, "weights": weights, "other writer": other}


@pytest.mark.parametrize("kind", ["text", "weights", "other writer"])
def test_encode_prompt_overwrite_refuses_a_file_that_is_not_our_embeddings(umt5_tokenizer, tmp_path, kind):
    target = _foreign_files(tmp_path)[kind]
    before = target.read_bytes()
    res = _export("encode-prompt", "--prompt", "a cat", "--tokenizer", umt5_tokenizer, "--out", target,
                  "--overwrite")
    _one_error_line(res, "is not an embeddings file dysink wrote")
    assert target.read_bytes() == before


def test_encode_prompt_overwrite_replaces_its_own_file(umt5_tokenizer, tmp_path):
    pytest.importorskip("torch")
    from safetensors import safe_open

    out = tmp_path / "emb.safetensors"
    encode = ("encode-prompt", "--tokenizer", umt5_tokenizer, "--out", out)
    assert _export(*encode, "--prompt", "a cat").exit_code == 0
    first = out.read_bytes()
    res = _export(*encode, "--prompt", "a dog walks", "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != first
    with safe_open(str(out), "np") as fh:
        assert list(fh.keys()) == ["prompt_embeds"] and fh.metadata()["writer"] == "dysink-export encode-prompt"
