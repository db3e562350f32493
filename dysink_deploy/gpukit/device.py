"""Is there a CUDA GPU, and which: the kit's skip rule and the device line of its report."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import shutil
import subprocess

from .kit import versions


def skip_reason() -> str | None:
    """Why the kit cannot run here (None: it can). Only what every stage needs: torch with a CUDA
    device. Triton, the plugin library or the harness missing skips one stage, not the kit."""
    try:
        import torch    # noqa: F401
    except ImportError:
        return "torch is not installed for this python3"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch" + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                                                 if "CUDA_VISIBLE_DEVICES" in os.environ else "")
    return None


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        res = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = res.stdout.strip().splitlines()[:1]
    if res.returncode != 0 or not first:
        return {}
    parts = [p.strip() for p in first[0].split(",")]
    return dict(zip(("name", "driver", "memory", "compute_cap"), parts))


def _driver_api_version() -> int | None:
    """cuDriverGetVersion through cuda-python (cuda-bindings 12.6+ or the older `cuda.cuda`)."""
    for name in ("cuda.bindings.driver", "cuda.cuda"):
        try:
            driver = importlib.import_module(name)
            err, version = driver.cuDriverGetVersion()
            if int(err) == 0:
                return int(version)
        except Exception:       # not installed, or no driver: the report says n/a
            continue
    return None


def device_info() -> dict:
    """The GPU, its driver, and the library versions (torch's view; nvidia-smi's where present)."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "machine": platform.machine(), "versions": versions()}
    smi = _nvidia_smi()
    info["driver"] = smi.get("driver")
    info["driver_api_version"] = _driver_api_version()
    try:
        import torch
    except ImportError:
        return info
    info["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    sm=f"sm_{props.major}{props.minor}", memory_gib=round(props.total_memory / 2 ** 30, 1),
                    multiprocessors=props.multi_processor_count, devices=torch.cuda.device_count())
    else:
        info["gpu"] = smi.get("name")
    return info


def device_line(info: dict) -> str:
    v = info.get("versions", {})
    return (f"{info.get('gpu') or 'no GPU'} ({info.get('sm', '?')}, {info.get('memory_gib', '?')} GiB) | driver "
            f"{info.get('driver') or 'n/a'} | CUDA (torch) {info.get('torch_cuda') or 'n/a'} | python {v.get('python')} | "
            f"torch {v.get('torch')} | triton {v.get('triton')} | {info.get('host')}")
