"""Reading a user's JSON file: a regular file only (a FIFO or a device would block), bounded size,
UTF-8, bounded nesting, a JSON object at the top; every failure is one DysinkError line naming the
file and what it was meant to be (`what`, e.g. "--config")."""

from __future__ import annotations

import json
import os
import stat

from .errors import DysinkError


def read_json_object(path: str, what: str, max_bytes: int = 1 << 20, kind: str = "settings file") -> dict:
    data = read_json(path, what, max_bytes, kind)
    if not isinstance(data, dict):
        raise DysinkError(f"{what} {path!r} must hold a JSON object ({kind})")
    return data


def read_json(path: str, what: str, max_bytes: int = 1 << 20, kind: str = "settings file"):
    """Any JSON value from a user's file, with the checks of `read_json_object`."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DysinkError(f"{what} {path!r} is not a regular file")
        if st.st_size > max_bytes:
            raise DysinkError(f"{what} {path!r} is larger than {max_bytes} bytes: not a {kind}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise DysinkError(f"cannot read {what} {path!r} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DysinkError(f"{what} {path!r} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise DysinkError(f"{what} {path!r} is not UTF-8 text (a binary file?)") from None
    except RecursionError:
        raise DysinkError(f"{what} {path!r} is nested too deeply to be a {kind}") from None
    return data
