"""RunSpec: every value checked where it is made, one line naming the field; the CLIs print the
field as its flag and read their defaults and help from it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dysink_deploy.cli.common import flag_names
from dysink_deploy.errors import DysinkError
from dysink_deploy.runtime import cli as run_cli
from dysink_deploy.runtime.spec import RunSpec, spec_default, spec_help


@pytest.mark.parametrize("fields, message", [
    ({"seed": -1}, "RunSpec.seed must lie in 0..2**63-1"),
    ({"seed": True}, "RunSpec.seed must lie in 0..2**63-1"),
    ({"weights_seed": 2 ** 63}, "RunSpec.weights_seed must lie in 0..2**63-1"),
    ({"threads": 0}, "RunSpec.threads must be an integer in 1..1024, got 0"),
    ({"device": "gpu"}, "RunSpec.device must be cpu, cuda or cuda:N"),
    ({"blocks": 0}, "RunSpec.blocks must be an integer in 1..10000, got 0"),
    ({"seconds": float("nan")}, "RunSpec.seconds must be a finite number in (0, 7499.8125]"),
    ({"blocks": 2, "seconds": 1.0}, "give RunSpec.blocks or RunSpec.seconds, not both"),
    ({"backend": "jax"}, "RunSpec.backend must be one of torch, onnxruntime, tensorrt"),
    ({"precision": "fp8"}, "RunSpec.precision must be one of fp32, fp16, bf16"),
    ({"kernels": "cuda"}, "RunSpec.kernels must be one of auto, triton, reference"),
    ({"model": "wan9"}, "RunSpec.model must be one of"),
    ({"model": "tiny", "model_config": {}}, "give RunSpec.model or RunSpec.model_config, not both"),
    ({"checkpoint": "/nonexistent/a.pt", "vae": "/nonexistent/v.pth"}, "these files do not exist: RunSpec.checkpoint"),
    ({"bundle": "b"}, "RunSpec.bundle is read by RunSpec.backend onnxruntime and tensorrt only"),
    ({"backend": "onnxruntime"}, "RunSpec.backend onnxruntime needs RunSpec.bundle DIR"),
    ({"cuda_graph": True}, "RunSpec.cuda_graph on RunSpec.backend torch needs RunSpec.device cuda"),
    ({"backend": "onnxruntime", "bundle": "b", "cuda_graph": True},
     "RunSpec.cuda_graph applies to RunSpec.backend tensorrt and torch only"),
    ({"backend": "onnxruntime", "bundle": "b", "device": "cuda", "explicit": frozenset({"device"})},
     "RunSpec.device: torch-backend flag(s)"),
    ({"prompt": "a cat", "prompts": [(0, "x")]}, "give one of RunSpec.prompt, RunSpec.prompt_embeds and RunSpec.prompts"),
    ({"tokenizer": "tok"}, "RunSpec.tokenizer / RunSpec.text_encoder encode text prompts"),
    ({"settings": [1]}, "settings must be a dict"),
    ({"pipeline": "yes"}, "RunSpec.pipeline must be True, False or None (the backend decides), got 'yes'"),
    ({"pipeline": 1}, "RunSpec.pipeline must be True, False or None"),
])
def test_bad_values_are_refused_in_one_line(fields, message):
    with pytest.raises(DysinkError) as info:
        RunSpec(**fields)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_good_spec_is_frozen_and_comparable():
    spec = RunSpec(model="tiny", seed=7, settings={"top_k": 1})
    with pytest.raises(AttributeError):
        spec.seed = 8
    assert spec == RunSpec(model="tiny", seed=7) and spec.replace(seed=8).seed == 8


def test_cli_messages_say_flags():
    assert flag_names("RunSpec.config_file and RunSpec.ort_provider, StreamConfig.top_k") == \
        "--config and --ort-provider, --top-k"


def test_dysink_run_reads_defaults_and_help_from_the_spec():
    params = {p.name: p for p in run_cli.main.params}
    for name in ("backend", "device", "kernels", "seed", "weights_seed", "ort_provider", "precision", "cuda_graph"):
        assert params[name].default == spec_default(name), name
        assert params[name].help.startswith(spec_help(name).rstrip(".")), name
    res = CliRunner().invoke(run_cli.main, ["--help"])
    assert spec_help("kernels").split(":")[0] in res.output
