"""Upper bounds of the counts, lengths, ports and thread numbers users give, each with its reason, so
RunSpec, the CLIs and the bench flags refuse the same values in the same words (one line naming the
field, the value, the range and what to do). Torch-free, numpy-free.

- MAX_BLOCKS = 10,000 blocks a run: stats.json lists every block and is rewritten (and fsynced)
  after each one, about 0.5 KB a block. 10,000 blocks are 120,000 video frames (2 h 5 min at
  16 fps) and a stats.json of ~5 MB written per block; ten times more would write ~50 MB a block,
  longer than the tiny model's block itself. A longer video: several runs.
- MAX_SECONDS = 7,499.8125 s: the video length of MAX_BLOCKS blocks of 3 latent frames (the first
  gives 9 video frames, each later one 12, at 16 fps); with other block sizes the block count is
  checked again after the conversion.
- MAX_THREADS = 1,024 CPU threads (torch, ONNX Runtime): beyond any machine's cores a thread adds
  only contention, and each costs a stack (100,000 of them exhaust the process).
- Ports: TCP's 1..65535.
Sizes (resolution, window, bank, layers) are bounded by memory, not by a number: the planner
(runtime/plan.py) refuses from its formulas what the device cannot hold, before anything is built.
"""

from __future__ import annotations

import math
import numbers

from .errors import DysinkError

__all__ = ["MAX_BLOCKS", "MAX_PORT", "MAX_SECONDS", "MAX_THREADS", "VIDEO_FPS", "check_blocks", "check_int",
           "check_number", "check_port", "check_seconds", "check_threads", "port_of_url"]

MAX_BLOCKS = 10_000
VIDEO_FPS = 16                      # the video's frame rate (runtime.video writes 16 fps)
MAX_SECONDS = (12 * MAX_BLOCKS - 3) / VIDEO_FPS     # 7499.8125: exactly MAX_BLOCKS blocks
MAX_THREADS = 1024
MAX_PORT = 65535

BLOCKS_WHY = (f"stats.json is rewritten after every block, so a run holds at most {MAX_BLOCKS} blocks, "
              "2 h 5 min of video; a longer video: several runs")


def _is_int(value) -> bool:
    """An integer (Python or numpy), never a bool: True is not 1 here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value, name: str, low: int, high: int, why: str = "") -> int:
    """`value` as an int in low..high, or one DysinkError line naming `name`, the value and the range."""
    if not _is_int(value) or not low <= value <= high:
        shown = repr(value) if not _is_int(value) else str(int(value))
        raise DysinkError(f"{name} must be an integer in {low}..{high}, got {shown}" + (f" ({why})" if why else ""))
    return int(value)


def check_number(value, name: str, low: float, high: float, why: str = "", low_open: bool = False) -> float:
    """`value` as a finite float in [low, high] ((low, high] with `low_open`), or one DysinkError line."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and (low < value if low_open else low <= value) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:.10g}, {high:.10g}]"
        raise DysinkError(f"{name} must be a finite number in {span}, got {value!r}" + (f" ({why})" if why else ""))
    return float(value)


def check_blocks(value, name: str = "--blocks", low: int = 1) -> int:
    return check_int(value, name, low, MAX_BLOCKS, BLOCKS_WHY)


def check_seconds(value, name: str = "--seconds") -> float:
    return check_number(value, name, 0.0, MAX_SECONDS, f"video seconds at {VIDEO_FPS} fps, at most the length of "
                        f"{MAX_BLOCKS} blocks; a longer video: several runs", low_open=True)


def check_threads(value, name: str = "--threads") -> int | None:
    """None (the library's default: every core) or 1..MAX_THREADS."""
    if value is None:
        return None
    return check_int(value, name, 1, MAX_THREADS, "CPU threads; more than the machine's cores only adds contention")


def check_port(value, name: str, allow_zero: bool = False) -> int:
    return check_int(value, name, 0 if allow_zero else 1, MAX_PORT,
                     "a TCP port" + ("; 0: a free one" if allow_zero else ""))


def port_of_url(url: str, name: str = "--url") -> int:
    """The port of a HOST:PORT (or [IPv6]:PORT) address, checked; one line when there is none."""
    text = str(url)
    host, sep, port = text.rpartition(":")
    if not sep or not host or host.endswith(":") and not host.startswith("["):
        raise DysinkError(f"{name} {text!r} must be HOST:PORT (e.g. 127.0.0.1:8001)")
    if not port.isdigit() or len(port) > 5:
        raise DysinkError(f"{name} {text!r} must end in a port number 1..{MAX_PORT} (HOST:PORT, e.g. 127.0.0.1:8001)")
    return check_port(int(port), f"the port of {name} {text!r}")
