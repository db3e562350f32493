"""Reading a user's JSON file: a regular file only (a FIFO or a device would block), bounded size,
UTF-8, bounded nesting, a JSON object at the top; every failure is one DysinkError line naming the
file and what it was meant to be (`what`, e.g. "--config").

Strict JSON (`strict_loads`): a key given twice, NaN / Infinity and integers longer than
MAX_INT_DIGITS digits are refused by name, where the standard parser keeps the last key, accepts
non-finite numbers and raises a traceback past Python's integer-parsing limit."""

from __future__ import annotations

import json
import os
import stat

from .errors import DysinkError

__all__ = ["MAX_INT_DIGITS", "StrictJSONError", "read_json", "read_json_object", "strict_loads"]

# No field of ours needs more (a seed is below 2**63, 19 digits); Python refuses > 4300 with a traceback.
MAX_INT_DIGITS = 40


class StrictJSONError(ValueError):
    """Valid JSON syntax that a settings file may not hold (the message names the key)."""


class _Bad:
    """A value the parser met and the file may not hold, reported with its key once the key is known."""

    def __init__(self, what: str) -> None:
        self.what = what


def _constant(name: str) -> _Bad:
    return _Bad(f"the non-finite number {name}")


def _integer(text: str):
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Bad(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _Bad(f"the number {text[:20]} (beyond a float's range)")
    return value


def _pairs(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"key {key!r} is given twice")
        out[key] = value
    return out


def _find_bad(value, path: str):
    if isinstance(value, _Bad):
        raise StrictJSONError(f"{path or 'the top-level value'} is {value.what}")
    if isinstance(value, dict):
        for k, v in value.items():
            _find_bad(v, f"{path}.{k}" if path else repr(k)[1:-1])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _find_bad(v, f"{path}[{i}]")


def strict_loads(text: str):
    """json.loads refusing duplicate keys, NaN/Infinity and overlong integers (StrictJSONError naming
    the key; json.JSONDecodeError for bad syntax)."""
    data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_integer,
                      parse_float=_float)
    _find_bad(data, "")
    return data


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
            data = strict_loads(f.read())
    except OSError as exc:
        raise DysinkError(f"cannot read {what} {path!r} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DysinkError(f"{what} {path!r} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except StrictJSONError as exc:
        raise DysinkError(f"{what} {path!r}: {exc}; fix the file") from None
    except UnicodeDecodeError:
        raise DysinkError(f"{what} {path!r} is not UTF-8 text (a binary file?)") from None
    except RecursionError:
        raise DysinkError(f"{what} {path!r} is nested too deeply to be a {kind}") from None
    return data
