"""The TensorRT-free plugin harness (`plugins/harness/`, program `dysink_plugin_harness`), Python side.

- `write_cases(out_dir, model, stream, precision, seed)`: one case folder per op at the contract's
  shapes (graphs.graph_specs): `case.json` (op, node attributes as the ONNX node carries them, inputs
  in the node's order, outputs with their comparison rule), `inputs/*.npy`, and the PyTorch
  references' outputs on CPU in `expected/*.npy` (+ a float64 evaluation in `exact/*.npy`).
- `build_harness(build_dir, tensorrt_include)`: CMake build against TensorRT's headers only.
- `run_harness(binary, library, case_dir, out_dir)`: runs it on one case and compares what it wrote
  with the references: a list of lines, each `PASSED ...`, `FAILED ...` or `SKIPPED ...` (no GPU).

Comparison rule (the kernel tests' rule, tests/plugins/test_*_kernel.py; never tuned): ratios and
retrieval slots identical to the reference's; `out` and `scores`: max error against the float64
evaluation <= 2 x the reference's own max error at the same precision (+ one float32 ulp of the score
scale for scores, where the float32 reference may be exact). bfloat16 is stored as its raw uint16 bits.
Torch is needed to write cases only; running and comparing need numpy alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ModelConfig, StreamConfig, model_preset
from ..errors import DysinkError
from ..graphs import TensorSpec, graph_specs
from .build import find_tensorrt_include

HARNESS_DIR = Path(__file__).parent / "harness"   # the CMake project
BINARY = "dysink_plugin_harness"
CASE_FORMAT = 1
SKIP_CODE = 77                                      # enqueue skipped: no GPU
OPS = ("GatedSinkAttention", "RetrieveSinks")
NODE_NAMES = {"GatedSinkAttention": "attn", "RetrieveSinks": "retrieve"}
SCORE_FLOOR = 2.0 ** -24                            # one float32 ulp of unit-vector cosines
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int64": np.int64,
          "int32": np.int32, "bool": np.bool_}


def op_contracts(model: ModelConfig, stream: StreamConfig, precision: str) -> dict[str, tuple[list, list]]:
    """op -> (input specs in the node's order, output specs): one layer's GatedSinkAttention of
    dit_step and the retrieve graph's RetrieveSinks."""
    specs = graph_specs(model, stream, precision)
    dit, retrieve = specs["dit_step"], specs["retrieve"]
    k_new = dit.output("k_new")                                  # [layers, L, H, D]
    block = TensorSpec("q", k_new.shape[1:], k_new.dtype)
    pool = dit.input("k_pool_0")
    gsa_in = [block, TensorSpec("k_cur", block.shape, block.dtype), TensorSpec("v_cur", block.shape, block.dtype),
              TensorSpec("k_pool", pool.shape, pool.dtype), TensorSpec("v_pool", pool.shape, pool.dtype),
              dit.input("local_ids"), dit.input("sink_ids")]
    ratios = dit.output("ratios")                                # [layers, S_sink]
    gsa_out = [TensorSpec("out", block.shape, block.dtype), TensorSpec("ratios", ratios.shape[1:], ratios.dtype)]
    return {"GatedSinkAttention": (gsa_in, gsa_out),
            "RetrieveSinks": (list(retrieve.inputs), list(retrieve.outputs))}


def node_attributes(stream: StreamConfig) -> dict[str, dict[str, tuple[str, object]]]:
    """op -> {attribute: (ONNX attribute type, value)}, what export writes on the dysink:: nodes
    (models/dit.py DiTStep, export/graph_modules.py RetrieveGraph, ops/*_node)."""
    from ..ops.gated_sink_attention import PLUGIN_ATTRS  # lazy: torch

    plugin = {name: ("STRING", value) for name, value in PLUGIN_ATTRS.items()}
    return {"GatedSinkAttention": {"threshold": ("FLOAT", float(stream.gate_threshold)),
                                   "sink_kv_bf16": ("INT", int(bool(stream.sink_kv_bf16))),
                                   "fixed_sinks": ("INT", int(stream.fixed_sink_pages)), **plugin},
            "RetrieveSinks": {"sink_size": ("INT", int(stream.sink_size)), "k": ("INT", int(stream.top_k)),
                              **plugin}}


def write_cases(out_dir, model: ModelConfig | str = "tiny", stream: StreamConfig | None = None,
                precision: str = "fp16", seed: int = 0) -> dict[str, Path]:
    """One case folder per op under out_dir (out_dir/<op>/); returns op -> folder."""
    import torch  # lazy: torch

    from . import harness_cases  # lazy: torch

    model = model_preset(model) if isinstance(model, str) else model
    stream = stream or model.default_stream()
    contracts = op_contracts(model, stream, precision)
    attributes = node_attributes(stream)
    generator = torch.Generator().manual_seed(seed)
    made = {}
    for op in OPS:
        inputs, outputs = contracts[op]
        tensors, expected, exact = harness_cases.make(op, inputs, attributes[op], stream, generator)
        folder = Path(out_dir) / op
        for sub in ("inputs", "expected", "exact"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        entries_in = []
        for spec, t in zip(inputs, tensors):
            harness_cases.save(folder / "inputs" / f"{spec.name}.npy", t, spec.dtype)
            entries_in.append({"name": spec.name, "file": f"inputs/{spec.name}.npy", "dtype": spec.dtype})
        entries_out = []
        for spec, t in zip(outputs, expected):
            harness_cases.save(folder / "expected" / f"{spec.name}.npy", t, spec.dtype)
            entry = {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape),
                     "expected": f"expected/{spec.name}.npy", "rule": "equal"}
            if spec.name in exact:
                np.save(folder / "exact" / f"{spec.name}.npy", exact[spec.name].numpy())
                entry.update(rule="error-2x", exact=f"exact/{spec.name}.npy",
                             floor=SCORE_FLOOR if op == "RetrieveSinks" else 0.0)
            entries_out.append(entry)
        case = {"format": CASE_FORMAT, "op": op, "node": NODE_NAMES[op], "precision": precision, "seed": seed,
                "attributes": {k: {"type": t, "value": v} for k, (t, v) in attributes[op].items()},
                "inputs": entries_in, "outputs": entries_out}
        (folder / "case.json").write_text(json.dumps(case, indent=1) + "\n")
        made[op] = folder
    return made


def read_case(case_dir) -> dict:
    case = json.loads((Path(case_dir) / "case.json").read_text())
    if case.get("format") != CASE_FORMAT:
        raise DysinkError(f"{case_dir}/case.json: format {case.get('format')!r}, this version reads {CASE_FORMAT}")
    return case


def read_tensor(path, dtype: str) -> np.ndarray:
    """A .npy of the contract dtype `dtype`; bfloat16 (raw uint16 bits) comes back as float32."""
    a = np.load(path, allow_pickle=False)
    if a.dtype != np.dtype(_NUMPY[dtype]):
        raise DysinkError(f"{path} holds {a.dtype}, expected {dtype}")
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a


def compare_outputs(case_dir, out_dir) -> list[str]:
    """The harness's outputs in out_dir against the case's expected ones: one PASSED/FAILED line each."""
    case = read_case(case_dir)
    lines = []
    for o in case["outputs"]:
        what = f"{case['op']}.{o['name']} ({o['dtype']} {tuple(o['shape'])})"
        path = Path(out_dir) / f"{o['name']}.npy"
        try:
            got = read_tensor(path, o["dtype"]) if path.is_file() else None
        except (DysinkError, ValueError) as exc:
            lines.append(f"FAILED {what}: {exc}")
            continue
        if got is None or list(got.shape) != o["shape"]:
            lines.append(f"FAILED {what}: " + (f"no {path}" if got is None else f"shape {got.shape}"))
            continue
        want = read_tensor(Path(case_dir) / o["expected"], o["dtype"])
        if o["rule"] == "equal":
            g, w = (np.ascontiguousarray(a).view(np.uint8).reshape(a.size, a.itemsize) for a in (got, want))
            diff = np.flatnonzero((g != w).any(axis=1)).tolist()
            lines.append(f"PASSED {what}: identical to the reference" if not diff else
                         f"FAILED {what}: {len(diff)} of {got.size} values differ from the reference "
                         f"(first at flat index {diff[0]}: {got.flat[diff[0]]} vs {want.flat[diff[0]]})")
            continue
        exact = np.load(Path(case_dir) / o["exact"]).astype(np.float64)
        err = float(np.abs(got.astype(np.float64) - exact).max()) if got.size else 0.0
        ref = float(np.abs(want.astype(np.float64) - exact).max()) if got.size else 0.0
        bound = 2 * ref + o.get("floor", 0.0)
        verdict = "PASSED" if np.isfinite(got.astype(np.float64)).all() and err <= bound else "FAILED"
        lines.append(f"{verdict} {what}: max error {err:.3g} vs float64, reference {ref:.3g} "
                     f"(rule: <= 2 x reference + {o.get('floor', 0.0):.3g})")
    return lines


def build_harness(build_dir, tensorrt_include=None) -> Path:
    """cmake + build of plugins/harness/ against TensorRT's headers (`tensorrt_include`, else
    $TensorRT_INCLUDE_DIR / $TensorRT_ROOT/include / the usual folders); returns the program."""
    if not shutil.which("cmake"):
        raise DysinkError("cmake is not installed; install cmake >= 3.18 and a C++17 compiler")
    if not (HARNESS_DIR / "CMakeLists.txt").is_file():
        raise DysinkError(f"the harness sources ({HARNESS_DIR}) are missing: they ship with the source tree")
    include = find_tensorrt_include(str(tensorrt_include) if tensorrt_include else None)
    if include is None:
        raise DysinkError("no TensorRT headers found: give the folder holding NvInferRuntime.h")
    build_dir = Path(build_dir)
    for what, cmd in (("cmake configure", ["cmake", "-S", str(HARNESS_DIR), "-B", str(build_dir),
                                           f"-DTensorRT_INCLUDE_DIR={include}"]),
                      ("cmake build", ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)])):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            text = (res.stderr + res.stdout).splitlines()
            first = next((ln for ln in text if "error" in ln.lower()), text[-1] if text else "no output")
            raise DysinkError(f"harness {what} failed: {first.strip()}")
    return build_dir / BINARY


def run_harness(binary, library, case_dir, out_dir, env: dict | None = None, timeout: float = 300,
                log: Callable[[str], None] | None = None) -> list[str]:
    """Runs the harness on one case, then compares. Lines: `PASSED`/`FAILED` per output after an
    enqueue; one `SKIPPED <op>: ...` line when it had no GPU (exit 77); one `FAILED <op>: ...` line with
    the harness's FAIL line when a check failed. `log` receives every line the harness printed."""
    op = read_case(case_dir)["op"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run([str(binary), str(library), str(case_dir), str(out_dir)], capture_output=True,
                             text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"FAILED {op}: the harness did not run: {exc}"]
    for line in res.stdout.splitlines() + res.stderr.splitlines():
        if log:
            log(line)
    said = res.stdout.strip().splitlines()
    last = said[-1] if said else (res.stderr.strip().splitlines() or ["no output"])[-1]
    if res.returncode == SKIP_CODE:
        return [last if last.startswith("SKIPPED ") else f"SKIPPED {op}: {last}"]
    if res.returncode != 0:
        fail = next((ln for ln in said if ln.startswith("FAIL ")), last)
        return [f"FAILED {op}: exit {res.returncode}: {fail}"]
    return compare_outputs(case_dir, out_dir)
