"""The package's shape (issue 18): imports go downward only, internal imports sit at the top of
their modules (the only ones inside functions keep torch, onnx, triton or tensorrt off a path that
must run without them, and say so with `# lazy: <library>`), one stream builder, files of one job.

Read from the source with `ast`, not by importing it, so the test sees every import, taken or not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"dysink_deploy": "dysink_deploy", "export": "dysink_deploy.export", "runtime": "dysink_deploy.runtime",
            "plugins": "dysink_deploy.plugins"}
# Layers, lowest first; a module may import its own layer and those below it.
CORE, PARTS, RUNTIME, EXPORT, FRONT, CLI = range(6)
LAYER_NAMES = ["core", "models/ops/plugins", "runtime", "export", "api/serving/bench/gpukit", "CLI"]


def layer(module: str) -> int:
    parts = module.split(".")
    last = parts[-1]
    if len(parts) > 1 and (parts[1] == "cli" or last in ("cli", "commands") or last.endswith("_cmd")):
        return CLI
    sub = parts[1] if len(parts) > 1 else ""
    if sub in ("models", "ops", "plugins", "checkpoints"):
        return PARTS
    if sub == "runtime":
        return RUNTIME
    if sub == "export":
        return EXPORT
    if sub in ("api", "serving", "bench", "gpukit") or sub.startswith("bench_"):     # bench_kv, bench_export
        return FRONT
    return CORE


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder)
            if "examples" in rel.parts:
                continue
            name = ".".join((package, *rel.with_suffix("").parts))
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path):
    """(target module, line, inside a function?, source line) for every import of the project's own code."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def targets(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = package.split(".")
        if node.level:
            base = base[:len(base) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        return [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    if target.startswith("dysink_deploy"):
                        yield target, child.lineno, in_function, lines[child.lineno - 1]
            yield from walk(child, inner)

    yield from walk(tree, False)


def test_the_source_tree_is_found():
    assert {"dysink_deploy.runtime.spec", "dysink_deploy.runtime.builder", "dysink_deploy.export.onnx_export",
            "dysink_deploy.plugins.aot", "dysink_deploy.api"} <= set(MODULES)


def test_layers_of_a_few_modules_spelled_out():
    assert layer("dysink_deploy.config") == CORE and layer("dysink_deploy.signals") == CORE
    assert layer("dysink_deploy.models.dit") == PARTS and layer("dysink_deploy.plugins.launch") == PARTS
    assert layer("dysink_deploy.runtime.builder") == RUNTIME and layer("dysink_deploy.runtime.cli") == CLI
    assert layer("dysink_deploy.export.check") == EXPORT and layer("dysink_deploy.export.check_cmd") == CLI
    assert layer("dysink_deploy.serving.triton_model") == FRONT and layer("dysink_deploy.serving.cli") == CLI
    assert layer("dysink_deploy.gpukit.runner") == FRONT and layer("dysink_deploy.gpukit.__main__") == FRONT
    assert layer("dysink_deploy.cli.common") == CLI


def test_imports_go_downward_only():
    upward = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {t} ({LAYER_NAMES[layer(t)]}) at line {line}"
              for m, path in MODULES.items() for t, line, _, _ in _imports(m, path) if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_the_runtime_needs_no_click_and_no_export():
    bad = []
    for m, path in MODULES.items():
        if layer(m) != RUNTIME:
            continue
        text = path.read_text()
        if re.search(r"^\s*(import click|from click)", text, re.M):
            bad.append(f"{m} imports click")
        bad += [f"{m} imports {t}" for t, *_ in _imports(m, path)
                if t.startswith(("dysink_deploy.export", "dysink_deploy.cli"))]
    assert not bad, bad


def test_internal_imports_inside_functions_say_why():
    """An import of the project's own code inside a function is there to keep a heavy library off a
    light path; `# lazy: torch` (or onnx, triton, tensorrt, ...) on its line says which."""
    unexplained = [f"{path.relative_to(ROOT)}:{line}: {text.strip()}" for m, path in MODULES.items()
                   for _, line, inner, text in _imports(m, path) if inner and "# lazy" not in text]
    assert not unexplained, "\n".join(unexplained)


def test_streams_are_assembled_in_one_place():
    """`Streamer(` is called by the builder only (and defined in runtime/stream.py)."""
    builders = {"dysink_deploy.runtime.builder"}
    calls = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Streamer" and m not in builders:
                calls.append(f"{m}:{node.lineno}")
    assert not calls, calls


@pytest.mark.parametrize("limit", [520])
def test_source_files_stay_readable(limit):
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > limit}
    assert not long, long
