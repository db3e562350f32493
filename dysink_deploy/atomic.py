"""Outputs written whole or not at all: build into a hidden sibling, then rename into place.

`staged_directory` for directories (bundles, model repositories), `write_atomic` for single files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """`.NAME.partial-PID-*` beside `out` left by processes that no longer exist (killed with SIGKILL,
    power loss): removed; returns them."""
    removed = []
    for path in out.parent.glob(f".{out.name}.partial-*-*"):
        pid = path.name[len(f".{out.name}.partial-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield `.NAME.partial-PID-XXXX` beside `out` (umask permissions, not mkdtemp's 0700); on success it
    replaces `out` (an existing one is moved aside first and removed after), on any error or
    interruption (SIGTERM / SIGHUP included, see cli.common) it is removed and `out` is left as it
    was. Partials of dead processes are removed first."""
    out = Path(os.path.abspath(out))        # `--out .` has a name too
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def umask_file_mode() -> int:
    """The permissions a new regular file gets under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, umask_file_mode())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
