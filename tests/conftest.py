"""Fixtures shared across the suite."""

import os

import pytest

# The Triton kernels run on CPU tensors under Triton's interpreter, which is chosen
# when a kernel module is imported: set it before any test imports one. GPU runs
# of the kernels go through `dysink-bench kernels` (make gpu-check), not this suite.
os.environ.setdefault("TRITON_INTERPRET", "1")   # `make gpu-check` sets it to 0


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """precision -> bundle path (lazily exported, shared by every export/bundle test)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from dysink_deploy.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[str, object] = {}

    def get(precision: str):
        if precision not in cache:
            cache[precision] = export_onnx("tiny", precision=precision, out=root / precision)
        return cache[precision]

    return get
