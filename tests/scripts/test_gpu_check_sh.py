"""scripts/gpu-check.sh: --prepare builds the kit from this checkout without a GPU (and without
TensorRT headers it says what it skipped and still exits 0); --kit on a machine without a GPU prints
one SKIPPED line and exits 77, with no package index and nothing installed (pip on PATH and on
PYTHONPATH replaced by tripwires)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dysink_deploy.gpukit import kit as K
from dysink_deploy.plugins.build import find_tensorrt_include

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
NO_HEADERS_ENV = ("DYSINK_TRT_INCLUDE_DIRS", "TensorRT_INCLUDE_DIR", "TensorRT_ROOT")


def _run(args, env=None, timeout=600):
    """From the checkout's root, where its own dysink_deploy/ could shadow the script's package."""
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits") / "kit"
    env = {k: v for k, v in os.environ.items() if k not in NO_HEADERS_ENV}
    res = _run(["--prepare", str(out), "--arch", "90", "--stream-blocks", "2"], env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout


def test_prepare_builds_the_kit_without_a_gpu(kit):
    path, stdout = kit
    manifest = K.load_manifest(path)              # every listed file there, with its size
    assert manifest["archs"] == [90] and manifest["size_bytes"] < K.SIZE_LIMIT
    kernels = manifest["contents"]["kernels"]
    assert set(kernels) == {"tiny", "wan2.1-t2v-1.3b"} and all(k["cubins"] > 0 for k in kernels.values())
    assert (path / K.KERNELS / "wan2.1-t2v-1.3b" / "kernels.json").is_file()
    assert manifest["contents"]["stream_reference"]["blocks"] == 2
    reference = json.loads((path / K.STREAM_REFERENCE).read_text())
    assert len(reference["decisions"]) == 2 and reference["spec"]["device"] == "cpu"
    assert manifest["source"]["sha256"] == K.source_digest() and manifest["versions"]["torch"]
    assert "kit size: " in stdout and "DONE | kit" in stdout
    if find_tensorrt_include(None) is None:       # no headers anywhere: said, not failed
        assert not manifest["contents"]["plugins"]["built"]
        assert "skipped | plugins: no TensorRT headers given" in stdout
        assert not (path / K.PLUGINS).exists()
    if (ROOT / "plugins" / "harness" / "CMakeLists.txt").is_file():
        assert list((path / K.HARNESS_CASES).glob("*/*/case.json")), "the harness's cases are in the kit"


def _tripwires(tmp_path: Path, python: str) -> tuple[dict, Path]:
    """PATH: python3 -> `python`, pip / pip3 that leave a mark; PYTHONPATH: a `pip` module that does too."""
    mark = tmp_path / "pip-was-called"
    bin_dir, fake = tmp_path / "bin", tmp_path / "fakepip" / "pip"
    bin_dir.mkdir()
    fake.mkdir(parents=True)
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    for name in ("pip", "pip3"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    for name in ("__init__.py", "__main__.py"):
        (fake / name).write_text(f"open({str(mark)!r}, 'w').close()\nraise SystemExit(1)\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(fake.parent), "PIP_NO_INDEX": "1",
           "HOME": os.environ.get("HOME", str(tmp_path)), "CUDA_VISIBLE_DEVICES": ""}
    return env, mark


def _one_skipped_line(res, mark: Path, reason: str):
    assert res.returncode == 77, res.stdout + res.stderr
    assert res.stdout.count("\n") == 1 and res.stdout.startswith("SKIPPED | ") and reason in res.stdout, res.stdout
    assert res.stderr == "" and not mark.exists()


def test_kit_without_a_gpu_one_skipped_line_and_77(kit, tmp_path):
    env, mark = _tripwires(tmp_path, sys.executable)       # this venv's python: torch, no GPU
    res = _run(["--kit", str(kit[0]), "--out", str(tmp_path / "report")], env=env)
    _one_skipped_line(res, mark, "no CUDA GPU visible to torch")
    assert not (tmp_path / "report").exists()


def test_kit_with_a_bare_python3(kit, tmp_path):
    """A python3 with nothing of the project installed (nor torch): the symlinked package imports."""
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if not bare or any(subprocess.run([bare, "-c", f"import {m}"], capture_output=True, cwd=tmp_path).returncode == 0
                       for m in ("dysink_deploy", "torch")):
        pytest.skip("no python3 without torch and dysink_deploy in /usr/bin")
    env, mark = _tripwires(tmp_path, bare)
    res = _run(["--kit", str(kit[0]), "--out", str(tmp_path / "report")], env=env)
    _one_skipped_line(res, mark, "torch is not installed")


def test_the_package_imports_from_the_linked_folder(tmp_path):
    """From the checkout's root too: the package and its package-dir subpackages resolve to the script's
    temporary folder of links, not the checkout's own dysink_deploy/ nor an installed copy."""
    res = _run(["--where"], env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    where = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    assert len(where) == 5 and all("dysink-gpukit-path-" in path for path in where.values()), where
    assert where["dysink_deploy.runtime"].endswith("dysink_deploy/runtime/__init__.py")


def test_bad_arguments_exit_2(tmp_path):
    assert _run(["--kit", str(tmp_path)]).returncode == 2                   # no --out
    res = _run(["--kit", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "is not a GPU kit" in res.stderr, res.stdout + res.stderr
    assert _run(["--frobnicate"]).returncode == 2


@pytest.mark.skipif(not os.environ.get("DYSINK_TRT_INCLUDE_DIRS"), reason="no TensorRT headers: set "
                    "DYSINK_TRT_INCLUDE_DIRS to build the kit's plugin library and harness")
def test_prepare_with_tensorrt_headers_builds_the_library(tmp_path):
    out = tmp_path / "kit"
    res = _run(["--prepare", str(out), "--arch", "90", "--stream-blocks", "1"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = K.load_manifest(out)
    assert manifest["contents"]["plugins"]["built"]
    assert (out / K.PLUGINS / "tiny" / "libdysink_plugins.so").is_file()
