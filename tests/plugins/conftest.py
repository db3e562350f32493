import pytest

pytest.importorskip("triton", reason="the kernels extra (triton) is not installed")
