"""Export tests need onnxruntime and onnxscript (the shared `bundles` fixture is in tests/conftest.py)."""

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
