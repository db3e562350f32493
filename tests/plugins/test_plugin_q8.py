"""dysink::GatedSinkAttentionQ8 in libdysink_plugins.so, host side (no TensorRT library, no GPU).

Kernel directories compiled for int8 and bf16 pages (sm_87) and fp8 pages (sm_90) are merged with
the model dtype's (sm_87) into one library, each cubin's symbol renamed "<kernel>|<pages>|<arch>":
the CUDA driver TEST DOUBLE (tests/plugins/cpp/driver_double.cpp as libcuda.so.1) records the names
and the arguments of every launch and runs nothing, so none of these cubins ever runs. Against each
TensorRT header version found, tests/plugins/cpp/q8_harness.cpp then checks the creator, output
types and shapes, format combinations, shape checks, serialization, which variant onShapeChange
picks for the pools' type and GPU (sm_87, sm_90) with the one-line messages when none fits, and
every argument enqueue launches, the scale pointers right after P. The embedding's page column and
its refusals (an unknown page type, an argument list the plugin does not launch) need no headers.
Headers: DYSINK_TRT_INCLUDE_DIRS=/path/v10.3.0/include:/path/v11.1/include (as test_plugin_library.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dysink_deploy.errors import DysinkError
from dysink_deploy.plugins import build as B
from dysink_deploy.plugins.embed import PAGE_CODE, embedded_source

from .test_plugin_library import HEADERS, NO_HEADERS, TEST_CPP, TOOLS, _checks

# What each compiled directory contributes: (kv_cache_dtype, arch, kernels taken from it).
PAGE_KERNELS = {"gate_partial_sums", "paged_attention"}
SOURCES = [("auto", 87, None), ("int8", 87, PAGE_KERNELS), ("bf16", 87, PAGE_KERNELS), ("fp8", 90, None)]


@pytest.fixture(scope="module")
def page_kernels(tmp_path_factory) -> Path:
    from dysink_deploy.config import model_preset
    from dysink_deploy.plugins import aot

    model = model_preset("tiny")
    root = tmp_path_factory.mktemp("pages")
    merged = root / "kernels"
    merged.mkdir()
    manifest, entries = None, []
    for kv, arch, take in SOURCES:
        src = aot.compile_kernels(model, model.default_stream(), ["fp16"], [arch], root / f"{kv}-{arch}",
                                  kv_cache_dtype=kv)
        part = json.loads((src / "kernels.json").read_text())
        manifest = manifest or part
        for e in part["kernels"]:
            if take is not None and e["kernel"] not in take:
                continue
            file = f"{kv}/{e['file']}"
            (merged / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / e["file"], merged / file)
            entries.append({**e, "file": file, "symbol": f"{e['kernel']}|{e['key'].get('pages', 'auto')}|{arch}"})
    manifest.update(kernels=entries, archs=[87, 90], kv_cache_dtype="mixed (test)")
    (merged / "kernels.json").write_text(json.dumps(manifest))
    return merged


@pytest.fixture(scope="module")
def built(page_kernels, tmp_path_factory):
    """include folder -> (library, q8_harness, folder of the CUDA driver double), once per header version."""
    cache = {}

    def get(include: Path):
        if include not in cache:
            version = B.tensorrt_header_version(include)
            root = tmp_path_factory.mktemp(f"q8-{version}")
            lib = B.build_library(page_kernels, root / "build", include)
            tests = root / "tests"
            out = ""
            for cmd in (["cmake", "-S", TEST_CPP, "-B", tests, f"-DTensorRT_INCLUDE_DIR={include}",
                         f"-DDYSINK_TRT_VERSION={version}"],
                        ["cmake", "--build", tests, "-j", str(os.cpu_count() or 2), "--target", "q8_harness",
                         "driver_double"]):
                res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
                assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
                out += res.stdout + res.stderr
            assert "warning:" not in out, out
            cache[include] = (lib, tests / "q8_harness", tests / "standin-cuda")
        return cache[include]

    return get


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
@pytest.mark.parametrize("include", HEADERS, ids=[B.tensorrt_header_version(h) for h in HEADERS])
def test_q8_harness_against_the_driver_double(include, built):
    lib, harness, cuda = built(include)
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        [str(cuda)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = subprocess.run([str(harness), str(lib), "0.8", "1", "1"], capture_output=True, text=True, env=env)
    _checks(res)
    lines = res.stdout.splitlines()
    # The checks that can fail on a wrong slot really compared argument lists (not vacuous).
    for kernel in ("gate_partial_sums", "paged_attention"):
        for what in ("int8 pools", "fp8 pools"):
            line = next(ln for ln in lines if ln.startswith(f"ok {what}: {kernel} arguments"))
            assert "p0x80000 p0x90000 p0x0 p0x0 (want" in line or \
                (kernel == "gate_partial_sums" and "i6 p0x80000 p0x0 p0x0 (want" in line), line
    assert any(ln.startswith("ok bf16 pools: paged_attention arguments") and "i6 p0x0 p0x0 (want" in ln
               for ln in lines), res.stdout


def _rows(text: str) -> list[list[str]]:
    return [[f.strip() for f in line.strip(" {},").split(",")] for line in text.splitlines()
            if line.startswith('    {"')]


def test_embedded_rows_carry_the_page_type_and_argument_count(page_kernels):
    rows = _rows(embedded_source(page_kernels))
    got = {(r[0].strip('"'), int(r[1]), int(r[6])): int(r[14]) for r in rows}
    pages = {v: k for k, v in PAGE_CODE.items()}
    want_args = {"gate_partial_sums": 13, "paged_attention": 17}
    for (kernel, arch, code), n_args in got.items():
        if kernel in want_args:
            scaled = pages[code] in ("int8", "fp8")
            assert n_args == want_args[kernel] + (0 if not scaled else 1 if kernel == "gate_partial_sums" else 2), \
                (kernel, arch, pages[code], n_args)
        else:
            assert code == 0, (kernel, code)              # gate_decide and the retrieval kernels read no pages
    assert {(k, a, pages[c]) for k, a, c in got if k in want_args} == {
        (k, a, p) for k in want_args for a, p in ((87, "auto"), (87, "int8"), (87, "bf16"), (90, "fp8"))}


def _edited(page_kernels: Path, dest: Path, edit) -> Path:
    shutil.copytree(page_kernels, dest)
    manifest = json.loads((dest / "kernels.json").read_text())
    entry = next(e for e in manifest["kernels"] if e["kernel"] == "paged_attention" and e["key"].get("pages") == "int8")
    edit(entry)
    (dest / "kernels.json").write_text(json.dumps(manifest))
    return dest


def test_embedding_refuses_an_unknown_page_type_or_another_argument_order(page_kernels, tmp_path):
    unknown = _edited(page_kernels, tmp_path / "fp4", lambda e: e["key"].update(pages="fp4"))
    with pytest.raises(DysinkError, match="has page type 'fp4', which this version's plugins do not know"):
        embedded_source(unknown)

    def scales_first(e):                                    # k_scale, v_scale before P: another launch order
        names = [a["name"] for a in e["args"]]
        i = names.index("k_scale")
        e["args"] = e["args"][:i - 1] + e["args"][i:i + 2] + [e["args"][i - 1]] + e["args"][i + 2:]

    moved = _edited(page_kernels, tmp_path / "moved", scales_first)
    with pytest.raises(DysinkError, match=r"takes the arguments .*k_scale, v_scale, P.*the plugin launches it with "
                                          r".*fixed_sinks, P, k_scale, v_scale: recompile"):
        embedded_source(moved)
