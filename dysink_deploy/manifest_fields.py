"""The JSON types of bundle.json's fields, checked once when a bundle is loaded.

The manifest is read by many places (the rebuild hint, the reference check, the engines, the
server, `inspect`); each used to assume its field's type, so a hand-edited or damaged manifest
with, say, a string where `checkpoints` holds an object ended in an AttributeError somewhere
later. `check_field_types` names the first field of the wrong type in one line, before any of
them is used. Fields this version does not read are not judged.
"""

from __future__ import annotations

from typing import Any, Mapping

# JSON type names, as a user reads them.
_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
          bool: "true or false", type(None): "null"}


def _kind(value: Any) -> str:
    return "true/false" if isinstance(value, bool) else _NAMES.get(type(value), type(value).__name__)


def _fits(value: Any, types: tuple) -> bool:
    if isinstance(value, bool):                 # JSON true is not an integer here
        return bool in types
    return isinstance(value, tuple(t for t in types if t is not bool))


# field -> accepted types; (field, sub-field) -> accepted types of a member of an object field.
TOP: dict[str, tuple] = {
    "kind": (str,), "precision": (str,), "model": (dict,), "stream": (dict,), "graphs": (dict,),
    "opset": (int,), "ir_version": (int,), "custom_op_domain": (dict,), "checkpoints": (dict,),
    "text_encoder": (dict,), "versions": (dict,), "engines": (dict,), "encoder_frames": (list,),
    "interactive": (bool,), "kv_cache_dtype": (str,),
}
MEMBERS: dict[str, dict[str, tuple]] = {
    "checkpoints": {"dit": (str, type(None)), "lora": (str, type(None)), "vae": (str, type(None)),
                    "pe": (str, type(None)), "use_ema": (bool,), "random_seed": (int,)},
    "text_encoder": {"preset": (str,), "checkpoint": (str, type(None)), "random_seed": (int,)},
    "custom_op_domain": {"domain": (str,), "version": (int,)},
}
GRAPH_ENTRY = {"file": (str,), "sha256": (str,), "bytes": (int,), "external_data": (list,), "inputs": (list,),
               "outputs": (list,)}
ENGINE_ENTRY = {"file": (str,), "sha256": (str,), "bytes": (int,), "tensorrt_version": (str,),
                "compute_capability": (str,), "plugin_library": (dict, type(None))}


def _expected(types: tuple) -> str:
    return " or ".join(_NAMES[t] for t in types)


def field_type_problem(manifest: Mapping[str, Any]) -> str | None:
    """'field X is a string, expected an object' for the first mistyped field, or None."""
    for key, types in TOP.items():
        if key in manifest and not _fits(manifest[key], types):
            return f"field {key} is {_kind(manifest[key])}, expected {_expected(types)}"
    for key, members in MEMBERS.items():
        for sub, types in members.items():
            record = manifest.get(key)
            if isinstance(record, dict) and sub in record and not _fits(record[sub], types):
                return f"field {key}.{sub} is {_kind(record[sub])}, expected {_expected(types)}"
    for group, schema in (("graphs", GRAPH_ENTRY), ("engines", ENGINE_ENTRY)):
        for name, entry in (manifest.get(group) or {}).items():
            if not isinstance(entry, dict):
                return f"field {group}.{name} is {_kind(entry)}, expected an object"
            for sub, types in schema.items():
                if sub in entry and not _fits(entry[sub], types):
                    return f"field {group}.{name}.{sub} is {_kind(entry[sub])}, expected {_expected(types)}"
            for i, item in enumerate(entry.get("external_data") or ()):
                if not isinstance(item, dict):
                    return f"field {group}.{name}.external_data[{i}] is {_kind(item)}, expected an object"
            if group == "engines" and not isinstance(entry.get("file"), str):
                return f"engine entry {name} has no file name"
    for i, n in enumerate(manifest.get("encoder_frames") or ()):
        if not _fits(n, (int,)):
            return f"field encoder_frames[{i}] is {_kind(n)}, expected an integer"
    return None


__all__ = ["field_type_problem"]
