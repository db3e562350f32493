"""Shared by the serving tests: the tritonserver binary (unpacked from PyPI's nvidia-pytriton wheel
once per machine, into ~/.cache/dysink-deploy) or a skip with the reason."""

from __future__ import annotations

import platform

import pytest


def tritonserver_or_skip():
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the tritonserver of PyPI's nvidia-pytriton wheel is x86-64 Linux only")
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (the serve extra)")
    from dysink_deploy.errors import DysinkError
    from dysink_deploy.serving.server import fetch_server, find_tritonserver

    try:
        return find_tritonserver()
    except DysinkError:
        pass
    try:
        fetch_server()
    except DysinkError as exc:
        pytest.skip(f"no tritonserver here and none could be fetched: {exc}")
    return find_tritonserver()
