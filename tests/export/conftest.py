"""Export tests need onnxruntime and onnxscript (the shared `bundles` and `bundle_copy` fixtures and
`edit_manifest` are in tests/conftest.py)."""

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tests.conftest import edit_manifest  # noqa: E402,F401 (tests here import it from this module)
