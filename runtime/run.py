"""Stream a video into a directory: the API behind `dysink-run`.

Writes DIR/video.mp4 block by block, DIR/stats.json after every block and
DIR/timeline.png at the end (also after an interruption). A run that stops
early keeps every block it finished.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..atomic import HeldLock, fsync_dir, take_lock
from ..config import ModelConfig, StreamConfig, model_preset
from ..signals import StopHold, exit_code, signals_deferred
from ..errors import DysinkError
from .report import plot_timeline, write_stats
from .stream import Streamer
from .video import STATS_PARTIAL_PREFIX, VideoWriter, remove_stale_partials

OUTPUT_FILES = ("video.mp4", "stats.json", "timeline.png")
LOCK_NAME = ".dysink-run.lock"


OutDirLock = HeldLock      # the held lock of an output directory (atomic.take_lock: exports take it too)


def lock_out_dir(out: str) -> HeldLock:
    """An exclusive lock on --out for this run (released by `close()`, which removes the lock file, or
    when the process ends); a second run is refused with one line naming the holder's pid."""
    return take_lock(os.path.join(out, LOCK_NAME), f"--out {out!r}", "dysink-run", holder="dysink-run")


def open_out_dir(out: str, overwrite: bool) -> OutDirLock:
    """Create and lock --out. With `overwrite` the previous run's outputs stay until the new run has
    its first block complete on disk (`stream_to_dir` replaces them then: ours only, never through a
    symbolic link).
    Close the returned lock when the run ends."""
    prepare_out_dir(out, overwrite)
    lock = lock_out_dir(out)
    remove_stale_partials(out)          # staged files of runs killed before their first block (the lock is ours)
    return lock


FPS = 16  # Wan2.1's frame rate


def blocks_for_seconds(seconds: float, block_frames: int = 3, fps: int = FPS) -> int:
    """Blocks needed for `seconds` of video: the first block gives 4*B-3 frames, later ones 4*B."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DysinkError(f"--seconds must be a finite number > 0, got {seconds}")
    per_block = 4 * block_frames
    return max(1, math.ceil((seconds * fps + 3) / per_block))


def check_out_dir(out: str, overwrite: bool) -> None:
    """Cheap checks before any expensive work: not a file, no earlier outputs unless --overwrite,
    never a symbolic link where an output goes (it would be written through)."""
    if os.path.islink(out):
        raise DysinkError(f"--out {out!r} is a symbolic link; give the real directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DysinkError(f"--out {out!r} exists and is not a directory")
    links = [f for f in OUTPUT_FILES + (LOCK_NAME,) if os.path.islink(os.path.join(out, f))]
    if links:
        raise DysinkError(f"--out {out!r}: {', '.join(links)} is a symbolic link; dysink-run never writes through "
                          "one: remove it or choose another directory")
    present = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(out, f))]
    if present and not overwrite:
        raise DysinkError(f"--out {out!r} already holds {', '.join(present)}; pass --overwrite or choose "
                          "another directory")


def prepare_out_dir(out: str, overwrite: bool) -> None:
    """Create --out (after the backend is built, so a failed start leaves no directory)."""
    check_out_dir(out, overwrite)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise DysinkError(f"cannot create --out {out!r} ({exc.strerror}); choose a writable directory") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DysinkError(f"--out {out!r} is not writable; choose a writable directory")


@dataclass
class RunResult:
    out: str
    blocks: int
    frames: int
    seconds: float
    interrupted: bool = False
    stats: dict = field(default_factory=dict)
    exit_code: int = 0          # 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP when interrupted


def _extra(stats: dict) -> dict:
    """Wall time since the run began and the process's peak memory, for stats.json's summary."""
    import resource

    return {"wall_s": round(time.perf_counter() - stats["t0"], 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def _replace_previous(out: str) -> None:
    """The new run has its first block on disk: the previous run's stats.json and timeline.png go (regular
    files only; check_out_dir refused symbolic links), durably, before the staged video replaces
    video.mp4: at no instant, power loss included, does a stats.json list blocks of another video."""
    removed = False
    for name in ("stats.json", "timeline.png"):
        path = os.path.join(out, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed = True
    if removed:
        fsync_dir(out)


def _publish(writer, out: str, stats_path: str, run_config: dict, stats: dict) -> int:
    """The new run's first block is complete on disk: it replaces the previous run's files. The new
    stats.json is written first, staged (a full disk then leaves the previous run untouched), then the
    old stats.json and timeline.png go, the video and the staged stats.json are renamed into place,
    each step durable before the next. Returns the blocks listed."""
    kept = writer.durable_blocks
    staged = os.path.join(out, f"{STATS_PARTIAL_PREFIX}{os.getpid()}")
    try:
        try:
            write_stats(staged, run_config, stats["blocks"][:kept], _extra(stats))
        except OSError as exc:          # the line names stats.json, not the staged file
            raise OSError(exc.errno, exc.strerror, stats_path) from None
        _replace_previous(out)
        writer.publish()
        os.replace(staged, stats_path)
        fsync_dir(out)
    finally:
        if os.path.isfile(staged) and not os.path.islink(staged):
            os.remove(staged)
    return kept


def _settle(writer, stats, stats_path, run_config, out, listed: int) -> int:
    """After the run stopped for any reason: make video.mp4 and stats.json hold exactly the same blocks
    and return how many. The video is completed if the disk allows, stats.json rewritten for the
    complete blocks; if that fails (a full disk), the video is cut back to the blocks the stats.json
    on disk lists. No block complete on disk: the previous run's files (--overwrite) stay as they were,
    and no new file is left."""
    try:
        writer.close()
    except OSError:
        pass
    if not writer.published:
        if writer.durable_blocks:
            try:
                listed = _publish(writer, out, stats_path, run_config, stats)
            except OSError:
                pass
        if not writer.published:
            writer.discard()
            return 0
    kept = writer.durable_blocks
    if kept and (kept != listed or not os.path.isfile(stats_path)):
        try:
            write_stats(stats_path, run_config, stats["blocks"][:kept], _extra(stats))
            listed = kept
        except OSError:
            pass
    kept = writer.rollback(listed)          # also cuts a torn fragment that a failed close left
    if kept == 0:
        for path in (writer.path, stats_path):
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
        return 0
    try:
        plot_timeline({**stats, "blocks": stats["blocks"][:kept]}, os.path.join(out, "timeline.png"))
    except OSError:
        pass
    return kept


def stream_to_dir(streamer: Streamer, model: ModelConfig, stream: StreamConfig, blocks: int, out: str,
                  run_config: dict, progress: bool = True, fps: int = FPS, hold: StopHold | None = None) -> RunResult:
    """Run `blocks` blocks and write the outputs. Ctrl-C / SIGTERM / SIGHUP stop it after the files
    are settled; from the first of them on, further ones are held (`hold`, armed for the block loop:
    the first signal's own handler begins it, and the loop's end does; a caller that passes one ends
    it when its own reporting is done)."""
    if blocks < 1:
        raise DysinkError(f"--blocks must be >= 1, got {blocks}")
    own_hold = hold is None
    hold = hold or StopHold()
    stats = {"config": run_config, "blocks": [], "t0": time.perf_counter()}
    stats_path = os.path.join(out, "stats.json")
    writer = VideoWriter(os.path.join(out, "video.mp4"), stream.width, stream.height, fps=fps, staged=True)
    t0 = time.perf_counter()
    interrupted, code, failure, listed = False, 0, None, 0
    bar = None
    hold.arm()
    try:
        try:
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=blocks, unit="block", desc=f"{model.name} [{streamer.backend.name}]")
            for record in streamer.blocks(blocks):
                with signals_deferred():        # a block's frames and its stats entry go together
                    writer.write_block(record.frames)
                    stats["blocks"].append(record.to_json())
                    if not writer.published and writer.durable_blocks:     # the first block is on disk
                        listed = _publish(writer, out, stats_path, run_config, stats)
                # Only the blocks already complete in the video, and only after their fragments are
                # fsynced: a SIGKILL or power loss leaves a stats.json whose every block decodes (the
                # video may hold one block more: see README, "What happens when").
                if writer.published and writer.durable_blocks != listed:
                    write_stats(stats_path, run_config, stats["blocks"][:writer.durable_blocks], _extra(stats))
                    listed = writer.durable_blocks
                if bar is not None:
                    bar.set_postfix(bank=streamer.bank.size, sinks=len(record.retrieved))
                    bar.update(1)
            hold.begin()                        # inside the try: a signal before it is caught below
        except KeyboardInterrupt as exc:      # Ctrl-C, or SIGTERM / SIGHUP (signals.StopSignal)
            interrupted, code = True, exit_code(exc)
        except OSError as exc:                # disk full, I/O error: stop now, keep what is consistent
            failure = exc
        except BaseException:
            hold.begin()
            _close_bar(bar)
            _settle(writer, stats, stats_path, run_config, out, listed)
            raise
        hold.begin()
        _close_bar(bar)
        kept = _settle(writer, stats, stats_path, run_config, out, listed)
    finally:
        if own_hold:
            hold.end()
    if failure is not None:
        where = failure.filename or os.path.join(out, "video.mp4")
        raise DysinkError(f"{failure.strerror or failure} writing {where} ({kept} blocks complete); "
                          "free space or choose another --out")
    if interrupted and kept == blocks:    # the signal came after the last block: a finished run
        interrupted = False
    stats["blocks"] = stats["blocks"][:kept]
    return RunResult(out=out, blocks=kept, frames=writer.frames_of(kept),
                     seconds=time.perf_counter() - t0, interrupted=interrupted, stats=stats,
                     exit_code=code if interrupted else 0)


def _close_bar(bar) -> None:
    if bar is not None:
        bar.close()
