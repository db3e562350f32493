"""The README's Python snippet runs as written (through the public API)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs():
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets, "the README has a Python snippet"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in snippets:
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("0 (9, 64, 96, 3)") and lines[5].startswith("5 (12, 64, 96, 3)")
    assert "'start_frame'" in lines[6]
