"""Export tests need onnxruntime and onnxscript (the shared `bundles` fixture is in tests/conftest.py)."""

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    """A private copy of the fp32 tiny bundle, free to tamper with."""
    import shutil

    dst = tmp_path / "b"
    shutil.copytree(bundles("fp32"), dst)
    return dst


def edit_manifest(path, fn):
    """Apply fn to the bundle's manifest dict and write it back."""
    import json

    from dysink_deploy.bundle import MANIFEST_NAME

    m = json.loads((path / MANIFEST_NAME).read_text())
    fn(m)
    (path / MANIFEST_NAME).write_text(json.dumps(m))
