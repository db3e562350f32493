"""Outputs written whole or not at all: build into a hidden sibling, then rename into place.

`staged_directory` for directories (bundles, kernel and plugin folders, model repositories),
`write_atomic` for single files. A directory is replaced only when every file in it is one the
project wrote (`owned`: from its manifest or marker), never the directory the user stands in, and
under a lock (`take_lock`, the one `dysink-run` takes too): a second writer of the same output is
refused in one line naming the holder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import DysinkError
from .jsonfile import StrictJSONError, strict_loads
from .signals import signals_deferred

# `owned(out)`: the paths (relative to `out`, '/'-separated) of the files the project wrote in an
# existing output; it raises DysinkError when `out` is not such an output at all.
Owned = Callable[[Path], Iterable[str]]
# Our own leftovers inside an output: half-written files or folders and outputs moved aside by killed
# writers (`.NAME.partial-PID[-X]`, `.NAME.old-PID`), and lock files of outputs nested in it.
_OUR_LEFTOVER = re.compile(r"^\..+\.(partial-\d+(-.*)?|old-\d+|lock)$")


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


# ---------------------------------------------------------------------------
# locks
# ---------------------------------------------------------------------------
class HeldLock:
    """A held lock file; `close()` removes the file, then releases it (a finished writer leaves only
    its outputs behind). Usable as a context manager."""

    def __init__(self, handle, path: str):
        self.handle, self.path = handle, path

    def close(self) -> None:
        if self.handle.closed:
            return
        try:                                # while still held: nobody can take a lock on it meanwhile
            if os.path.samestat(os.fstat(self.handle.fileno()), os.stat(self.path, follow_symlinks=False)):
                os.remove(self.path)
        except OSError:
            pass
        self.handle.close()

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def take_lock(path: str, what: str, label: str, holder: str = "process",
              instead: str = "another directory") -> HeldLock:
    """An exclusive lock on the file `path` (created; released by `close()` or when the process ends).
    Held by another process: one line, `WHAT is in use by another HOLDER (pid N)`, HOLDER being the
    label that process wrote (`label`: this one's, e.g. 'dysink-export onnx') or `holder`."""
    path = os.path.abspath(path)
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DysinkError(f"{what}: cannot create the lock file {path} ({exc.strerror}); "
                              f"choose {instead}") from None
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            handle.close()
            pid, _, who = text.partition(" ")
            raise DysinkError(f"{what} is in use by another {who.strip() or holder} (pid {pid or 'unknown'}); wait "
                              f"for it to finish or choose {instead}") from None
        try:        # the holder may have removed the file between our open and our lock: take the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    else:
        raise DysinkError(f"{what}: its lock file {path} keeps being replaced; try again")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {label}")
    handle.flush()
    return HeldLock(handle, path)


def lock_path(out: str | os.PathLike) -> Path:
    """Where a replaced output's lock lives: `.NAME.lock` beside it (the output itself is renamed)."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------
def check_output_place(path: str | os.PathLike, flag: str = "--out") -> None:
    """`path` can be created: its nearest existing folder is a directory (not `FILE/x`) and writable."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DysinkError(f"{flag} {os.fspath(path)}: {parent} is a file, not a directory; choose a path in a "
                          "directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DysinkError(f"{flag} {os.fspath(path)}: {parent} is not writable; choose a writable directory")


def check_output_file(path: str | os.PathLike | None, flag: str, links: bool = False) -> None:
    """A file to write: not a directory, not a symbolic link (unless `links`: a log may go to
    /dev/stderr), in a directory that can take it."""
    if path is None:
        return
    if os.path.islink(path) and not links:
        raise DysinkError(f"{flag} {os.fspath(path)} is a symbolic link; give a plain file path (nothing is written "
                          "through a link)")
    if os.path.isdir(path):
        raise DysinkError(f"{flag} {os.fspath(path)} is a directory; give a file path, e.g. "
                          f"{os.path.join(os.fspath(path), 'server.log')}")
    check_output_place(path, flag)


def refuse_cwd(out: str | os.PathLike, flag: str = "--out") -> None:
    """Never replace the directory the user stands in, nor one above it."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:                          # the current directory was removed: nothing to protect
        return
    target = Path(out).resolve()
    if target == cwd or target in cwd.parents:
        where = "the directory you are in" if target == cwd else f"a folder above the directory you are in ({cwd})"
        raise DysinkError(f"{flag} {os.fspath(out)} is {where}; it would be replaced from under you: run from "
                          f"elsewhere or choose another {flag}")


def foreign_entries(out: Path, owned: Iterable[str]) -> list[str]:
    """What `out` holds that is not in `owned`: files, links and empty folders, relative to `out`."""
    mine = {os.path.normpath(p) for p in owned}
    foreign = []
    for root, dirs, files in os.walk(out):
        rel = os.path.relpath(root, out)
        for name in [d for d in dirs if os.path.islink(os.path.join(root, d)) or _OUR_LEFTOVER.match(d)]:
            dirs.remove(name)               # a link to a folder, or our leftover: an entry, never walked into
            files.append(name)
        for name in files:
            path = os.path.normpath(os.path.join(rel, name))
            if path not in mine and not _OUR_LEFTOVER.match(name):
                foreign.append(path)
        if not dirs and not files and rel != ".":
            foreign.append(rel + "/")
    return sorted(foreign)


def check_replaceable(out: str | os.PathLike, owned: Owned | None, flag: str = "--out") -> None:
    """An existing `out` may be replaced only if it holds nothing but what `owned` lists."""
    out = Path(out)
    if owned is None or not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        kind = "a symbolic link" if out.is_symlink() else "not a directory"
        raise DysinkError(f"{flag} {out} is {kind}; --overwrite replaces only this project's outputs, nothing was "
                          f"touched: choose another {flag}")
    foreign = foreign_entries(out, owned(out))
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise DysinkError(f"{flag} {out} holds {foreign[0]}{more}, which dysink did not write; --overwrite replaces "
                          f"only the files it wrote, nothing was touched: move it out or choose another {flag}")


def manifest_owned(manifest: str, pick: Callable[[dict], Iterable], what: str, flag: str = "--out") -> Owned:
    """`owned` of an output recognised by its JSON manifest (or marker) `manifest`: that file and the
    names `pick(data)` yields (non-strings skipped). No manifest, or one that cannot be read: refused,
    since which files are ours is then unknown."""
    def owned(out: Path) -> set[str]:
        path = out / manifest
        if path.is_symlink() or not path.is_file():
            raise DysinkError(f"{flag} {out} is not {what} (no {manifest}); --overwrite replaces only those, nothing "
                              f"was touched: choose another {flag}")
        try:
            if path.stat().st_size > 64 << 20:
                raise ValueError("over 64 MiB")
            data = strict_loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            names = {manifest, *(n for n in pick(data) if isinstance(n, str) and n)}
        except (OSError, UnicodeDecodeError, ValueError, StrictJSONError, TypeError, AttributeError) as exc:
            raise DysinkError(f"{flag} {out}: its {manifest} is unreadable ({exc}), so which files dysink wrote there "
                              f"is unknown; nothing was touched: remove it yourself or choose another {flag}") from None
        return names
    return owned


def _one_line(exc: OSError, out: Path, flag: str) -> DysinkError:
    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    hint = "; free some space and run it again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return DysinkError(f"{what}{where}: the partial output was removed, {flag} {out} is as it was{hint}")


@contextmanager
def staged_directory(out: str | os.PathLike, owned: Owned | None = None, label: str = "dysink",
                     flag: str = "--out") -> Iterator[Path]:
    """Yield `.NAME.partial-PID-XXXX` beside `out` (umask permissions, not mkdtemp's 0700); on success it
    replaces `out` (an existing one is moved aside first and removed after), on any error or
    interruption (SIGTERM / SIGHUP included, see cli.common) it is removed and `out` is left as it
    was; an OSError (disk full, read-only) becomes one line. Before anything is made: `out` is not
    the current directory nor above it, and is locked (`.NAME.lock` beside it: a second writer is
    refused); with `owned`, an existing `out` holding anything else is refused, before the work and
    again before the swap. Partials of dead processes are removed first."""
    out = Path(os.path.abspath(out))        # `--out .` has a name too
    refuse_cwd(out, flag)
    if out.is_symlink():
        raise DysinkError(f"{flag} {out} is a symbolic link; give the real directory")
    check_output_place(out, flag)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DysinkError(f"cannot create {out.parent} for {flag} {out} ({exc.strerror}); choose a writable "
                          "directory") from None
    lock = take_lock(str(lock_path(out)), f"{flag} {out}", label, instead=f"another {flag}")
    try:
        check_replaceable(out, owned, flag)
        remove_stale_partials(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        except OSError as exc:
            raise DysinkError(f"{flag} {out}: cannot create its staging folder in {out.parent} ({exc.strerror}); "
                              "nothing was written, choose a writable directory") from None
        umask = os.umask(0)
        os.umask(umask)
        try:
            tmp.chmod(0o777 & ~umask)
            yield tmp
            check_replaceable(out, owned, flag)     # nothing of the user's arrived meanwhile
            with signals_deferred():                # never between the two renames
                if out.exists():
                    old = out.parent / f".{out.name}.old-{os.getpid()}"
                    out.rename(old)
                    tmp.rename(out)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    tmp.rename(out)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _one_line(exc, out, flag) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.close()


def umask_file_mode() -> int:
    """The permissions a new regular file gets under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: str) -> None:
    """Make the renames and removals done in `directory` durable (power loss), where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:         # a filesystem that cannot sync a directory: nothing more to do
        pass
    finally:
        os.close(fd)


def temp_prefix(path: str) -> str:
    """The hidden temporary name's prefix of an atomic write to `path`: '.NAME.tmp-'."""
    return f".{os.path.basename(path)}.tmp-"


def write_atomic(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`: after a crash or a
    power loss `path` is the old file or the new one, whole (the data is fsynced before the rename,
    the directory after it)."""
    directory = os.path.dirname(os.path.abspath(path))
    # Named after its target (".stats.json.tmp-XXXX"): a run that finds one of a killed run's in its
    # --out removes it (runtime/video.remove_stale_partials), and nothing else of that name.
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_file_mode())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
