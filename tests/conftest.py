"""Fixtures shared across the suite."""

import pytest


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
