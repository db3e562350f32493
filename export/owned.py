"""What `dysink-export onnx --overwrite` may replace: the files a bundle's manifest lists.

bundle.json, each graph's file and external data, each engine and the plugin library its engines
use (`dysink-export build`), and a `plugins/` folder made by `dysink-export plugins`. Anything else in
the folder (a user's note, a file of another tool) makes `--overwrite` refuse, naming it
(atomic.staged_directory); so does an export of some graphs (`--graph`) over a bundle that holds
more, which would replace a complete bundle by a partial one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ..atomic import Owned, manifest_owned
from ..bundle import MANIFEST_NAME
from ..errors import DysinkError
from ..plugins.build import plugin_dir_files


def _entries(manifest: dict, section: str) -> Iterator[dict]:
    entries = manifest.get(section)
    for entry in entries.values() if isinstance(entries, dict) else ():
        if isinstance(entry, dict):
            yield entry


def bundle_names(manifest: dict) -> Iterator[str]:
    """Every file a bundle manifest names (graphs, their external data, engines, the plugin library)."""
    for section in ("graphs", "engines"):
        for entry in _entries(manifest, section):
            yield entry.get("file")
            data = entry.get("external_data")
            for item in data if isinstance(data, list) else ():
                yield item.get("file") if isinstance(item, dict) else item
            library = entry.get("plugin_library")
            if isinstance(library, dict):
                yield library.get("file")


_MANIFEST_FILES = manifest_owned(MANIFEST_NAME, bundle_names, "a bundle")


def bundle_owned(graphs: Iterable[str] | None = None) -> Owned:
    """`owned` of an existing bundle. `graphs`: the graphs the new export writes when it is a subset
    (`--graph`); a bundle holding others is refused (they would be lost)."""
    keep = None if graphs is None else set(graphs)

    def owned(out: Path) -> set[str]:
        names = _MANIFEST_FILES(out)
        if keep is not None:
            have = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")).get("graphs")
            lost = sorted(set(have) - keep) if isinstance(have, dict) else []
            if lost:
                raise DysinkError(f"--out {out} holds graph(s) {', '.join(lost)} that this export (--graph "
                                  f"{' --graph '.join(sorted(keep))}) would drop: a complete bundle is not replaced "
                                  "by a partial one, nothing was touched; export every graph (no --graph) or choose "
                                  "another --out")
        plugins = out / "plugins"
        if plugins.is_dir() and not plugins.is_symlink():
            try:
                names |= {f"plugins/{n}" for n in plugin_dir_files(plugins)}
            except DysinkError:
                pass                        # its kernels cannot be read: only what the manifest names is ours
        return names
    return owned
