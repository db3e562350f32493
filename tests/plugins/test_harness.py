"""The TensorRT-free plugin harness (plugins/harness/, dysink_deploy.plugins.harness): it builds against
each TensorRT header version found without warnings; `write_cases` writes what the references compute
on the contract's tiny shapes, with the attributes export puts on the nodes; the host half (creators,
build calls, deserialization, attachToContext, onShapeChange) runs against the real built
libdysink_plugins.so and skips enqueue here with exit 77 and one line; wrong dtypes and attributes
are exit 1 with one FAIL line; its .npy reader/writer round-trips each dtype; the comparison rule.

enqueue itself needs a GPU: it has not run here (no GPU on this machine); its device path runs against
the CUDA driver TEST DOUBLE (tests/plugins/cpp/driver_double.cpp), which computes nothing.
Headers: DYSINK_TRT_INCLUDE_DIRS=/path/v10.3.0/include:/path/v11.1/include (as test_plugin_library.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dysink_deploy.config import model_preset
from dysink_deploy.plugins import build as B
from dysink_deploy.plugins import harness as H
from dysink_deploy.plugins import harness_cases as C

from .test_plugin_library import HEADERS, NO_HEADERS, TOOLS, kernel_dir  # noqa: F401  (kernel_dir: a fixture)

IDS = [B.tensorrt_header_version(h) for h in HEADERS]
needs_headers = [pytest.mark.skipif(not HEADERS, reason=NO_HEADERS),
                 pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the harness")]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}    # the host half, also on a machine with a GPU


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return H.write_cases(tmp_path_factory.mktemp("cases"), "tiny", None, "fp16", 0)


@pytest.fixture(scope="module")
def built(kernel_dir, tmp_path_factory):  # noqa: F811
    """include -> (libdysink_plugins.so, harness, the harness build's compiler output), once each."""
    cache = {}

    def get(include: Path):
        if include not in cache:
            root = tmp_path_factory.mktemp(f"harness-{B.tensorrt_header_version(include)}")
            lib = B.build_library(kernel_dir, root / "lib", include)
            build = root / "harness"
            out = ""
            for cmd in (["cmake", "-S", H.HARNESS_DIR, "-B", build, f"-DTensorRT_INCLUDE_DIR={include}"],
                        ["cmake", "--build", build, "-j", str(os.cpu_count() or 2)]):
                res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
                assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
                out += res.stdout + res.stderr
            cache[include] = (lib, H.build_harness(build, include), out)   # build_harness: up to date already
        return cache[include]

    return get


def _run(binary, *args, env=NO_GPU) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env)


# ---------------- building ----------------

@pytest.mark.parametrize("include", HEADERS, ids=IDS)
@needs_headers[0]
@needs_headers[1]
def test_builds_without_warnings_and_links_no_tensorrt(include, built):
    _, binary, out = built(include)
    assert binary.is_file() and "warning:" not in out, out
    needed = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True).stdout
    assert "NEEDED" in needed and not any(w in needed for w in ("nvinfer", "libcuda", "cudart")), needed


# ---------------- cases ----------------

@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cases_hold_the_references_outputs_at_the_contracts_shapes(precision, tmp_path):
    model = model_preset("tiny")
    stream = model.default_stream()
    made = H.write_cases(tmp_path, model, stream, precision, seed=3)
    contracts = H.op_contracts(model, stream, precision)
    attributes = H.node_attributes(stream)
    refs = {"GatedSinkAttention": lambda t, a: C.gated_sink_attention_ref(
                *t, a["threshold"], bool(a["sink_kv_bf16"]), a["fixed_sinks"]),
            "RetrieveSinks": lambda t, a: C.retrieve_sinks_ref(*t, a["sink_size"], a["k"])}
    for op, folder in made.items():
        case = H.read_case(folder)
        inputs, outputs = contracts[op]
        assert [(i["name"], i["dtype"]) for i in case["inputs"]] == [(s.name, s.dtype) for s in inputs]
        assert [(o["name"], o["dtype"], tuple(o["shape"])) for o in case["outputs"]] == \
            [(s.name, s.dtype, s.shape) for s in outputs]
        assert {k: (v["type"], v["value"]) for k, v in case["attributes"].items()} == attributes[op]
        tensors = [C.load(folder / i["file"], i["dtype"]) for i in case["inputs"]]
        assert [tuple(t.shape) for t in tensors] == [s.shape for s in inputs]
        assert [t.dtype for t in tensors] == [C.TORCH[s.dtype] for s in inputs]
        values = {k: v["value"] for k, v in case["attributes"].items()}
        for o, want in zip(case["outputs"], refs[op](tensors, values)):
            got = C.load(folder / o["expected"], o["dtype"])
            assert got.dtype == want.dtype and torch.equal(got, want), (op, o["name"])
            assert o["rule"] == ("error-2x" if o["name"] in ("out", "scores") else "equal")
    ratios = C.load(made["GatedSinkAttention"] / "expected" / "ratios.npy", "float32")
    slots = C.load(made["RetrieveSinks"] / "expected" / "slots.npy", "int64")
    assert ratios.shape == (stream.sink_slots,) and (slots >= 0).all()   # k eligible entries found


def test_attributes_are_what_export_writes_on_the_nodes(monkeypatch):
    """The exporter's own attribute dicts (ops/*_node under export), captured, against the cases'."""
    from dysink_deploy.ops.gated_sink_attention import gated_sink_attention_node
    from dysink_deploy.ops.retrieve_sinks import retrieve_sinks_node

    seen = {}

    def symbolic(name, inputs, attrs, dtypes, shapes, version):
        seen[name.split("::")[1]] = attrs
        return tuple(torch.empty(s, dtype=d) for s, d in zip(shapes, dtypes))

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    monkeypatch.setattr(torch.onnx.ops, "symbolic_multi_out", symbolic)
    stream = model_preset("tiny").default_stream(sink_size=3)             # a fixed sink: fixed_sinks = 1
    x, ids = torch.zeros(2, 1, 16), torch.zeros(1, dtype=torch.int64)
    gated_sink_attention_node(x, x, x, x[None], x[None], ids, ids, stream.gate_threshold, stream.sink_kv_bf16,
                              stream.fixed_sink_pages)
    retrieve_sinks_node(x[0], ids, x[0], ids.int(), ids[0], ids[0], stream.sink_size, stream.top_k)
    onnx_type = {float: "FLOAT", int: "INT", str: "STRING"}
    for op, attrs in H.node_attributes(stream).items():
        assert {k: (onnx_type[type(v)], v) for k, v in seen[op].items()} == attrs, op


# ---------------- the host half against the real library ----------------

@pytest.mark.parametrize("include", HEADERS, ids=IDS)
@needs_headers[0]
@needs_headers[1]
def test_host_half_runs_and_enqueue_is_skipped_here(include, built, cases, tmp_path):
    lib, binary, _ = built(include)
    for op, folder in cases.items():
        res = _run(binary, lib, folder, tmp_path / op)
        lines = res.stdout.splitlines()
        assert res.returncode == H.SKIP_CODE, res.stdout + res.stderr
        assert not [ln for ln in lines if not ln.startswith(("ok ", "SKIPPED "))], res.stdout
        assert [ln for ln in lines if ln.startswith("SKIPPED ")] == [lines[-1]]
        assert lines[-1].startswith(f"SKIPPED enqueue of {op}: ") and "the host half passed" in lines[-1]
        for check in ("creator dysink::" + op, "createPlugin(kBUILD) from the fields the ONNX parser passes",
                      "getOutputDataTypes", "getOutputShapes", "supportsFormatCombination", "configurePlugin",
                      "getWorkspaceSize", "clone", "createPlugin(kRUNTIME)", "attachToContext", "onShapeChange"):
            assert any(ln.startswith("ok " + check) for ln in lines), (check, res.stdout)
        assert not any(ln.startswith("ok enqueue") for ln in lines) and not list((tmp_path / op).glob("*.npy"))
        said = []
        assert H.run_harness(binary, lib, folder, tmp_path / "again", env=NO_GPU, log=said.append) == [lines[-1]]
        assert said[:len(lines)] == lines
    gsa = next(ln for ln in _run(binary, lib, cases["GatedSinkAttention"], tmp_path).stdout.splitlines()
               if "ONNX parser passes" in ln)
    assert "threshold=0.800000012 (float32), sink_kv_bf16=1 (int32), fixed_sinks=0 (int32)" in gsa, gsa


def _edit(folder: Path, dest: Path, fn) -> Path:
    shutil.copytree(folder, dest)
    case = json.loads((dest / "case.json").read_text())
    fn(case, dest)
    (dest / "case.json").write_text(json.dumps(case))
    return dest


def _retype(name: str, dtype: str, in_case: bool = True):
    def fn(case, dest):
        entry = next(i for i in case["inputs"] if i["name"] == name)
        np.save(dest / entry["file"], np.load(dest / entry["file"]).astype(np.dtype(dtype)))
        if in_case:
            entry["dtype"] = dtype
    return fn


def _attr(name: str, type_: str, value):
    return lambda case, dest: case["attributes"].update({name: {"type": type_, "value": value}})


def _output(name: str, key: str, value):
    return lambda case, dest: next(o for o in case["outputs"] if o["name"] == name).update({key: value})


BAD = {
    "query_valid-bool": ("RetrieveSinks", _retype("query_valid", "bool"),
                         "FAIL supportsFormatCombination: RetrieveSinks refuses position 3: input 3 query_valid (bool"),
    "page-ids-int32": ("GatedSinkAttention", _retype("local_ids", "int32"),
                       "FAIL supportsFormatCombination: GatedSinkAttention refuses position 5: input 5 local_ids (int32"),
    "npy-not-the-case-dtype": ("GatedSinkAttention", _retype("q", "float32", in_case=False),
                               "FAIL case: ", "q.npy holds '<f4' but the case says float16"),
    "k-9": ("RetrieveSinks", _attr("k", "INT", 9), "FAIL createPlugin: RetrieveSinks refused", "k must lie in 1..8"),
    "threshold-int": ("GatedSinkAttention", _attr("threshold", "INT", 1), "FAIL createPlugin:",
                      "threshold must be a float"),
    "sink_kv_bf16-2": ("GatedSinkAttention", _attr("sink_kv_bf16", "INT", 2), "FAIL createPlugin:",
                       "sink_kv_bf16 must be 0 or 1, got 2"),
    "no-fixed_sinks": ("GatedSinkAttention", lambda case, dest: case["attributes"].pop("fixed_sinks"),
                       "FAIL createPlugin:", "absent: fixed_sinks"),
    "plugin_version-2": ("RetrieveSinks", _attr("plugin_version", "STRING", "2"),
                         "FAIL creator: getCreators() has no IPluginCreatorV3One for dysink::RetrieveSinks version 2",
                         "dysink::GatedSinkAttention v1, dysink::RetrieveSinks v1"),
    "ratios-float16": ("GatedSinkAttention", _output("ratios", "dtype", "float16"),
                       "FAIL getOutputDataTypes: ratios is float32, the contract says float16"),
    "slots-shape": ("RetrieveSinks", _output("slots", "shape", [3]),
                    "FAIL getOutputShapes: slots is (2,), the contract says (3,)"),
}


@pytest.mark.parametrize("bad", BAD, ids=list(BAD))
@needs_headers[0]
@needs_headers[1]
def test_a_wrong_dtype_or_attribute_is_exit_1_with_one_line(bad, built, cases, tmp_path):
    op, fn, *texts = BAD[bad]
    lib, binary, _ = built(HEADERS[0])
    folder = _edit(cases[op], tmp_path / "case", fn)
    res = _run(binary, lib, folder, tmp_path / "out")
    lines = res.stdout.splitlines()
    assert res.returncode == 1 and [ln for ln in lines if not ln.startswith("ok ")] == [lines[-1]], res.stdout
    assert lines[-1].startswith(texts[0]) and all(t in lines[-1] for t in texts), lines[-1]
    assert H.run_harness(binary, lib, folder, tmp_path / "out", env=NO_GPU) == [f"FAILED {op}: exit 1: {lines[-1]}"]


@needs_headers[0]
@needs_headers[1]
def test_the_library_and_the_harness_must_share_a_tensorrt_major(built, cases, tmp_path):
    majors = {B.tensorrt_header_version(h).split(".")[0]: h for h in HEADERS}
    if len(majors) < 2:
        pytest.skip("needs headers of two TensorRT majors (DYSINK_TRT_INCLUDE_DIRS)")
    first, second = list(majors.values())[:2]
    res = _run(built(second)[1], built(first)[0], cases["RetrieveSinks"], tmp_path)
    assert res.returncode == 1 and res.stdout.splitlines()[-1].startswith("FAIL TensorRT version: "), res.stdout


# ---------------- the .npy reader / writer ----------------

ROUND_TRIP = [np.arange(6, dtype=np.float32).reshape(2, 3) / 7, np.array([1.5, -0.0, np.inf], np.float16),
              np.array([0x3F80, 0xBF81, 0x7FC0], np.uint16), np.array([-1, 2 ** 40, 3], np.int64)[None],
              np.arange(24, dtype=np.int32).reshape(2, 3, 4), np.array([True, False, True]), np.array(7, np.int64),
              np.zeros((0,), np.float32)]


@needs_headers[0]
@needs_headers[1]
def test_npy_reader_and_writer_round_trip_each_dtype(built, tmp_path):
    binary = built(HEADERS[0])[1]
    for i, a in enumerate(ROUND_TRIP):
        src, dst = tmp_path / f"in{i}.npy", tmp_path / f"out{i}.npy"
        np.save(src, a)
        res = _run(binary, "--npy-roundtrip", src, dst)
        assert res.returncode == 0, res.stdout + res.stderr
        back = np.load(dst)
        assert back.dtype == a.dtype and back.shape == a.shape and back.tobytes() == a.tobytes(), (i, back, a)
    for name, a, text in (("f8", np.zeros(2), "dtype '<f8' is not supported"),
                          ("big", np.zeros(2, ">f4"), "dtype '>f4' is not supported"),
                          ("fortran", np.asfortranarray(np.zeros((2, 3), np.float32)), "Fortran-ordered")):
        np.save(tmp_path / f"{name}.npy", a)
        res = _run(binary, "--npy-roundtrip", tmp_path / f"{name}.npy", tmp_path / "x.npy")
        assert res.returncode == 1 and res.stdout.startswith("FAIL read: ") and text in res.stdout, res.stdout
    (tmp_path / "cut.npy").write_bytes((tmp_path / "in0.npy").read_bytes()[:-4])
    res = _run(binary, "--npy-roundtrip", tmp_path / "cut.npy", tmp_path / "x.npy")
    assert res.returncode == 1 and "holds 20 data bytes, its header <f4 (2, 3) says 24" in res.stdout, res.stdout


# ---------------- the comparison (no GPU needed: a stand-in writes the outputs) ----------------

STAND_IN = """#!{python}
import shutil, sys
from pathlib import Path
lib, case, out = sys.argv[1:]
for f in Path(case, "expected").glob("*.npy"):
    shutil.copy(f, Path(out, f.name))
print("PASSED stand-in")
"""


def test_run_harness_compares_outputs_with_the_kernel_tests_rule(cases, tmp_path):
    stand_in = tmp_path / "stand-in"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    for op, folder in cases.items():
        lines = H.run_harness(stand_in, "lib.so", folder, tmp_path / op)   # the references themselves pass
        assert len(lines) == 2 and all(ln.startswith(f"PASSED {op}.") for ln in lines), lines
    out = tmp_path / "GatedSinkAttention"
    ratios = np.load(out / "ratios.npy")
    ratios[0] += 0.25
    np.save(out / "ratios.npy", ratios)
    folder = cases["GatedSinkAttention"]
    exact = np.load(folder / "exact" / "out.npy")
    expected = H.read_tensor(folder / "expected" / "out.npy", "float16").astype(np.float64)
    ref = np.abs(expected - exact).max()
    for value, verdict in ((exact.flat[0] + 10 * ref, "FAILED"), (np.nan, "FAILED"), (None, "PASSED")):
        worse = expected.copy()
        if value is not None:
            worse.flat[0] = value
        np.save(out / "out.npy", worse.astype(np.float16))
        got = H.compare_outputs(folder, out)
        assert got[0].startswith(f"{verdict} GatedSinkAttention.out (float16 (72, 2, 32)): max error"), got
        assert got[1].startswith("FAILED GatedSinkAttention.ratios (float32 (2,)): 1 of 2 values differ"), got
    (out / "out.npy").unlink()
    assert H.compare_outputs(folder, out)[0].startswith("FAILED GatedSinkAttention.out (float16 (72, 2, 32)): no ")


NO_TORCH = """
import sys
sys.modules["torch"] = None                       # any import of torch fails
from dysink_deploy.plugins import harness as H
print(H.compare_outputs(sys.argv[1], sys.argv[2]))
"""


def test_running_and_comparing_need_no_torch(cases):
    folder = cases["RetrieveSinks"]
    res = subprocess.run([sys.executable, "-c", NO_TORCH, str(folder), str(folder / "expected")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.count("PASSED RetrieveSinks.") == 2, res.stdout + res.stderr


@needs_headers[0]
@needs_headers[1]
def test_the_enqueue_path_against_the_cuda_driver_double(built, cases, tmp_path):
    """With the CUDA driver TEST DOUBLE (tests/plugins/cpp/driver_double.cpp: host memory, launches
    recorded, no kernel runs) as libcuda.so.1: device buffers, onShapeChange's kernel loads, enqueue
    twice, the outputs written with the contract's dtypes and shapes. Nothing writes them (they keep the
    harness's 0xA5 fill), and the comparison says so for every output."""
    lib, binary, _ = built(HEADERS[0])
    double = tmp_path / "standin-cuda" / "libcuda.so.1"
    double.parent.mkdir()
    subprocess.run(["c++", "-std=c++17", "-shared", "-fPIC", "-O1", "-fvisibility=hidden", "-o", str(double),
                    str(Path(__file__).parent / "cpp" / "driver_double.cpp")], check=True)
    env = {**os.environ, "LD_LIBRARY_PATH": str(double.parent)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for op, folder in cases.items():
        out = tmp_path / op
        res = _run(binary, lib, folder, out, env=env)
        lines = res.stdout.splitlines()
        assert res.returncode == 0 and lines[-1].startswith(f"DONE {op}: host half and enqueue on CUDA driver "
                                                            "TEST DOUBLE device 0 (sm_87)"), res.stdout + res.stderr
        assert "ok enqueue again: bit-identical outputs" in lines and not res.stderr, res.stdout + res.stderr
        for o in H.read_case(folder)["outputs"]:
            a = np.load(out / f"{o['name']}.npy")
            assert a.dtype == np.dtype(o["dtype"]) and list(a.shape) == o["shape"], o
            assert set(a.tobytes()) == {0xA5}, o["name"]                   # untouched: the double runs no kernel
        got = H.run_harness(binary, lib, folder, tmp_path / "again" / op, env=env)
        assert len(got) == 2 and all(ln.startswith(f"FAILED {op}.") for ln in got), got
