"""The plugin library (`libdysink_plugins.so`) of a bundle: where it is, and loading it once.

The manifest names the library relative to the bundle (`plugins/libdysink_plugins.so`), so a bundle
works from any directory and after `dysink-export build --out`. TensorRT's registry is one per
process, and `IPluginRegistry::loadLibrary` returns null for a library whose creators are already
registered: a second tensorrt backend in the process (a second `api.open_stream`, a second stream of
a Triton Inference Server instance) reuses the first load instead of loading again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ...bundle import Bundle, confined_file, sha256_file
from ...errors import DysinkError

PLUGIN_LIBRARY = "libdysink_plugins.so"
BUNDLE_PLUGIN_PATH = f"plugins/{PLUGIN_LIBRARY}"      # where a bundle keeps the library its engines use

_loaded: dict[str, object] = {}     # real path -> what load_library returned (kept: the library stays loaded)
_lock = threading.Lock()


def bundle_plugin_library(bundle: Bundle, entry: dict, rebuild: str) -> Path | None:
    """The plugin library an engine entry records, resolved inside the bundle and checked against its
    sha256; None for an engine built without plugins (`dysink-export build --no-plugins`)."""
    record = entry.get("plugin_library")
    if record is None:
        return None
    if not isinstance(record, dict):
        raise DysinkError(f"bundle {bundle.path}: engine {entry.get('file')} has a malformed plugin_library record; "
                          f"rebuild the engines: {rebuild}")
    lib = confined_file(bundle.path, record.get("file"), f"plugin library of {entry.get('file')}", rebuild)
    if lib is None or sha256_file(lib) != record.get("sha256"):
        raise DysinkError(f"the plugin library the engine {entry['file']} was built with "
                          f"({bundle.path / str(record.get('file'))}) is missing or changed; rebuild the engines with "
                          f"the library you have: {rebuild}")
    return lib


def load_plugin_library(registry, path: str | os.PathLike) -> None:
    """Load `path` into TensorRT's registry (`IPluginRegistry.load_library`) unless this process
    loaded it already."""
    key = os.path.realpath(path)
    with _lock:
        if key in _loaded:
            return
        handle = registry.load_library(key)
        if handle is None:
            raise DysinkError(f"TensorRT could not load the plugin library {path} (see the messages above); "
                              "rebuild it with dysink-export plugins against this TensorRT version")
        _loaded[key] = handle


def loaded_libraries() -> list[str]:
    with _lock:
        return sorted(_loaded)
