"""`dysink-export plugins` end to end on the tiny fp16 bundle, for sm_87 only (one architecture keeps the
kernel compile short): what it prints, what it leaves in --out, and its refusal to replace an existing
--out without --overwrite. Needs TensorRT's headers (DYSINK_TRT_INCLUDE_DIRS or TensorRT_INCLUDE_DIR, as
for test_plugin_library.py), cmake and a C++ compiler; no TensorRT library, no GPU.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dysink_deploy.plugins.build import AUTOREG_LIBRARY, LIBRARY, tensorrt_header_version
from dysink_deploy.plugins.cli import plugins_command

from .test_plugin_library import HEADERS, NO_HEADERS, TOOLS


def _export_cli() -> list[str]:
    script = Path(sys.executable).parent / "dysink-export"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dysink_deploy.cli.export_cli"]


def _env() -> dict:
    # The compile runs in the command's own process (no interpreter), headers only from the option.
    drop = {"TRITON_INTERPRET", "TensorRT_INCLUDE_DIR", "TensorRT_ROOT"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.skipif(not HEADERS, reason=NO_HEADERS)
@pytest.mark.skipif(not TOOLS, reason="cmake and a C++ compiler are needed to build the plugin library")
def test_dysink_export_plugins_builds_the_library_and_keeps_an_existing_out(bundles, tmp_path):
    bundle = bundles("fp16")
    out = tmp_path / "plugins"
    cmd = [*_export_cli(), "plugins", "--bundle", str(bundle), "--arch", "87", "--tensorrt-include", str(HEADERS[0]),
           "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    lib = out / LIBRARY
    lines = res.stdout.splitlines()
    assert f"wrote {lib}" in lines and f"wrote {out / AUTOREG_LIBRARY}" in lines, res.stdout
    assert lib.is_file() and (out / AUTOREG_LIBRARY).is_file()
    # Which TensorRT the library is for, from the headers' NvInferVersion.h.
    version = tensorrt_header_version(HEADERS[0])
    major = version.split(".")[0]
    assert f"{LIBRARY} targets TensorRT {major} (headers {version}); load it only with a TensorRT {major}.x runtime" \
        in lines, res.stdout
    nm = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert {"getCreators", "setLoggerFinder", "dysinkRegisterPlugins", "dysinkFindKernel",
            "dysinkPluginsTensorRTVersion"} <= {line.split()[-1] for line in nm.splitlines() if line.strip()}
    # The autoreg library finds the main one beside it: loading it from --out works (no TensorRT here, so
    # it registers nothing and says so in one line).
    load = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(out / AUTOREG_LIBRARY)],
                          capture_output=True, text=True, env=_env())
    assert load.returncode == 0 and "no TensorRT is loaded" in load.stderr, load.stderr
    # What --out holds is what its help says: both libraries and kernels/, no build folder.
    assert {p.name for p in out.iterdir()} == {LIBRARY, AUTOREG_LIBRARY, "kernels"}
    assert (out / "kernels" / "kernels.json").is_file()
    help_text = " ".join(plugins_command.get_help(click.Context(plugins_command, info_name="plugins")).split())
    assert "libdysink_plugins.so, libdysink_plugins_autoreg.so and kernels/" in help_text \
        and "build folder is not kept" in help_text, help_text

    # Again without --overwrite: refused in one line, the library untouched, nothing left beside it.
    before = (hashlib.sha256(lib.read_bytes()).hexdigest(), lib.stat().st_mtime_ns)
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert again.returncode == 2, again.stdout + again.stderr
    assert "already exists; pass --overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1, \
        again.stderr
    assert (hashlib.sha256(lib.read_bytes()).hexdigest(), lib.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plugins"]
