"""`dysink-export triton-repo`: a Triton model repository serving a bundle's streams.

    REPO/dysink/config.pbtxt      decoupled Python-backend model, instance group, parameters
    REPO/dysink/1/model.py        dysink_deploy/serving/triton_model.py
    REPO/dysink_repo.json         what was generated from what (bundle, sha256 of its manifest)

The model imports the installed dysink_deploy: the paths of this environment are written beside it
(dysink/1/python_path.json); paths that do not exist are skipped, so the repository runs unchanged in
NVIDIA's Triton containers where dysink_deploy is installed (or mounted and listed there).

Text (settings, schedules, prompts, the per-block stats JSON) travels as UTF-8 bytes in UINT8 tensors,
and outputs are built through DLPack: the Python-backend stub of tritonserver 2.51 (the one PyPI's
nvidia-pytriton wheel bundles) is built against numpy 1.x, and with numpy 2 in the model's
environment its numpy-array paths return empty output buffers and broken string tensors (seen here).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
from pathlib import Path

from ..atomic import staged_directory
from ..bundle import Bundle, sha256_file
from ..errors import DysinkError
from ..limits import check_threads
from ..runtime.plan import plan

MODEL_NAME = "dysink"


def _pbtxt_str(value: str) -> str:
    return json.dumps(value)          # a JSON string literal is a valid protobuf text string


def config_pbtxt(bundle: Bundle, instances: int, kind: str, gpus: list[int], max_streams: int, threads: int,
                 provider: str, tokenizer: str | None) -> str:
    d = bundle.model.dit
    h, w = bundle.stream.height, bundle.stream.width
    group = (f'  {{ count: {instances}, kind: KIND_GPU, gpus: [ {", ".join(map(str, gpus))} ] }}' if kind == "gpu"
             else f"  {{ count: {instances}, kind: KIND_CPU }}")
    params = {"bundle": str(bundle.path.resolve()), "max_streams": str(max_streams), "threads": str(threads),
              "provider": provider, "tokenizer": tokenizer or ""}
    lines = [f'name: "{MODEL_NAME}"', 'backend: "python"', "max_batch_size: 0",
             "model_transaction_policy { decoupled: true }",
             "input [",
             '  { name: "SEED", data_type: TYPE_INT64, dims: [ 1 ] },',
             '  { name: "BLOCKS", data_type: TYPE_INT64, dims: [ 1 ] },',
             f'  {{ name: "PROMPT_EMBEDS", data_type: TYPE_FP32, dims: [ {d.text_len}, {d.text_dim} ], optional: true }},',
             '  { name: "PROMPT", data_type: TYPE_UINT8, dims: [ -1 ], optional: true },',
             '  { name: "SETTINGS", data_type: TYPE_UINT8, dims: [ -1 ], optional: true },',
             '  { name: "SCHEDULE", data_type: TYPE_UINT8, dims: [ -1 ], optional: true },',
             '  { name: "CONTROL", data_type: TYPE_UINT8, dims: [ -1 ], optional: true }',
             "]",
             "output [",
             f'  {{ name: "FRAMES", data_type: TYPE_UINT8, dims: [ -1, {h}, {w}, 3 ] }},',
             '  { name: "STATS", data_type: TYPE_UINT8, dims: [ -1 ] }',
             "]",
             "instance_group [", group, "]"]
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_pbtxt_str(key)} value: {{ string_value: {_pbtxt_str(value)} }} }}")
    return "\n".join(lines) + "\n"


def environment_paths() -> list[str]:
    """This environment's site-packages (dysink_deploy is installed there, or linked by a .pth file)."""
    paths: list[str] = []
    for p in site.getsitepackages() + [site.getusersitepackages()]:
        if os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


def write_repo(bundle_path: str, out: str, instances: int = 1, kind: str = "cpu", gpus: list[int] | None = None,
               max_streams: int | None = None, threads: int = 1, overwrite: bool = False,
               tokenizer: str | None = None) -> Path:
    if not 1 <= instances <= 64:
        raise DysinkError(f"--instances must lie in 1..64, got {instances}")
    check_threads(threads)
    bundle = Bundle.load(bundle_path)
    if kind == "gpu" and not gpus:
        gpus = [0]
    if kind == "cpu" and gpus:
        raise DysinkError("--gpus applies to --kind gpu")
    provider = "cuda" if kind == "gpu" else "cpu"
    if max_streams is None:
        max_streams = planned_streams(bundle, kind)
    if max_streams < 1:
        raise DysinkError(f"--max-streams must be >= 1, got {max_streams}")
    if tokenizer and not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
        raise DysinkError(f"--tokenizer {tokenizer!r} has no tokenizer.json")
    if tokenizer and bundle.text_encoder is None:
        raise DysinkError(f"text prompts on the server need the bundle's umt5_encoder graph; export it with "
                          f"--text-encoder: {bundle.rebuild_command()} --text-encoder FILE")
    target = Path(out)
    if target.exists() and not overwrite:
        raise DysinkError(f"{target} already exists; pass --overwrite or choose another --out")
    if target.exists() and not (target / "dysink_repo.json").is_file():
        raise DysinkError(f"--out {target} is not a repository made by dysink-export triton-repo; nothing was "
                          "touched: choose another --out")
    with staged_directory(target) as tmp:
        model_dir = tmp / MODEL_NAME
        (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), model_dir / "1" / "model.py")
        (model_dir / "1" / "python_path.json").write_text(json.dumps(environment_paths(), indent=1))
        (model_dir / "config.pbtxt").write_text(config_pbtxt(
            bundle, instances, kind, gpus or [], max_streams, threads, provider,
            str(Path(tokenizer).resolve()) if tokenizer else None))
        (tmp / "dysink_repo.json").write_text(json.dumps({
            "bundle": str(bundle.path.resolve()), "bundle_manifest_sha256": sha256_file(bundle.path / "bundle.json"),
            "instances": instances, "kind": kind, "gpus": gpus or [], "max_streams": max_streams,
            "threads": threads, "python": sys.version.split()[0]}, indent=1))
    return target


def planned_streams(bundle: Bundle, kind: str) -> int:
    """Streams one instance may hold: on a GPU, from the memory planner and the device's free memory;
    on the CPU, 2 (each stream holds its own pools in host memory; raise it with --max-streams)."""
    if kind != "gpu":
        return 2
    try:
        import torch

        free, _ = torch.cuda.mem_get_info()
    except Exception:  # noqa: BLE001 (no torch / no GPU here: the user gives --max-streams)
        raise DysinkError("--kind gpu: give --max-streams N (no GPU visible here to plan from)") from None
    p = plan(bundle.model, bundle.stream, bundle.precision, memory=int(free))
    weights = sum(v for k, v in p.items.items() if k.startswith("weights"))
    per_stream = p.total - weights          # pools, caches, activations, context: counted per stream (safe side)
    return max(1, int((free - weights) // max(per_stream, 1)))
