"""MP4 output written block by block.

The file is a fragmented MP4 (moov up front, one fragment per keyframe) and
every block starts on a keyframe, so whatever was written before an
interruption stays playable: no index has to be written at the end.

Durability (measured, PyAV 18 / FFmpeg's mov muxer): a fragment reaches the file
when the next keyframe arrives, so once block N's first frame is muxed, blocks
< N are complete on disk. The muxer writes through `_DurableFile` (Python I/O):
every byte it hands over is written whole or raises (a short write on a full
disk is retried, then ENOSPC raises), each block is fsynced, and the file size
after each block is recorded, so `rollback(k)` can cut the file back to exactly
k complete blocks (the run does it after a full disk; nothing torn is left).
`durable_blocks` counts the complete blocks; `stats.json` lists at most those.

With `staged=True` the frames go to a hidden `.video.mp4.partial-PID` until
`publish()` renames it into place (`--overwrite` keeps the previous video until
the new run has its first block complete on disk); `discard()` removes it.
"""

from __future__ import annotations

import errno
import glob
import os

import numpy as np

from ..atomic import fsync_dir, temp_prefix
from ..errors import DysinkError

PARTIAL_PREFIX = ".video.mp4.partial-"
STATS_PARTIAL_PREFIX = ".stats.json.partial-"      # the first stats.json of a run, staged (run._publish)


class _DurableFile:
    """The file the muxer writes: whole writes or an OSError (never a silent short write)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = os.write(self.fd, view[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        self.size += done
        return done

    def tell(self) -> int:
        return self.size

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def remove_stale_partials(out: str) -> None:
    """Partial videos (and staged stats.json) of runs killed before their first block was published,
    and the temporary files of a stats.json or timeline.png write a kill cut short (call with the --out
    lock held: no other run writes there)."""
    for prefix in (PARTIAL_PREFIX, STATS_PARTIAL_PREFIX, temp_prefix("stats.json"), temp_prefix("timeline.png")):
        for path in glob.glob(os.path.join(glob.escape(out), prefix + "*")):
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)


class VideoWriter:
    def __init__(self, path: str, width: int, height: int, fps: int = 16, crf: int = 18, staged: bool = False):
        import av  # PyAV: lazy so the runtime imports without it

        if width % 2 or height % 2:
            raise DysinkError(f"video size {width}x{height} must be even for yuv420p")
        self.path = path
        self.file_path = (os.path.join(os.path.dirname(path), f"{PARTIAL_PREFIX}{os.getpid()}") if staged else path)
        self.published = not staged
        try:
            self._file = _DurableFile(self.file_path)
        except OSError as exc:
            raise DysinkError(f"cannot create {path!r} ({exc.strerror or exc}); choose a writable --out") from None
        self._container = av.open(self._file, mode="w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"})
        stream = self._container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # zerolatency: no look-ahead, so each block's frames leave the encoder
        # (and reach the disk) with the next block's keyframe or at close.
        stream.options = {"crf": str(crf), "tune": "zerolatency", "preset": "veryfast"}
        self._stream = stream
        self._av = av
        self.frames_written = 0
        self.blocks_written = 0
        self._block_frames: list[int] = []
        self._ends: dict[int, int] = {}     # complete blocks -> file size holding exactly them
        self._broken = False                # a write failed: only rollback() is left

    def write_block(self, frames: np.ndarray) -> None:
        """frames: uint8 [T, H, W, 3]. The block's first frame is a keyframe."""
        if self._broken or self._container is None:
            raise DysinkError("the video writer is closed")
        try:
            for i, arr in enumerate(frames):
                frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                if i == 0:
                    frame.pict_type = self._av.video.frame.PictureType.I
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
            self._file.fsync()
        except BaseException:
            self._broken = True
            raise
        self.frames_written += len(frames)
        self._block_frames.append(len(frames))
        self.blocks_written += 1
        self._ends[self.blocks_written - 1] = self._file.size    # the previous blocks' fragments are out

    @property
    def durable_blocks(self) -> int:
        """Blocks whose frames are complete in the file (all of them once closed)."""
        return max(self._ends, default=0)

    def frames_of(self, blocks: int) -> int:
        return sum(self._block_frames[:blocks])

    def sync(self) -> None:
        """Push what the muxer wrote to the storage device (power loss)."""
        try:
            self._file.fsync()
        except OSError:
            pass

    def publish(self) -> None:
        """Move a staged video into place (the caller removed what it replaces); durable before
        stats.json can list a block of it."""
        if not self.published:
            os.replace(self.file_path, self.path)
            self.file_path, self.published = self.path, True
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def discard(self) -> None:
        """Close and remove the file (a run stopped before its first block)."""
        self._abandon()
        if os.path.lexists(self.file_path):
            os.remove(self.file_path)

    def _abandon(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:       # a full disk again, or FFmpeg refusing a broken muxer: the rollback cuts it
                self._broken = True
        self._file.close()

    def close(self) -> None:
        """Complete the last block; an OSError (full disk) leaves `durable_blocks` as it was."""
        if self._container is None:
            return
        if self._broken:
            self._abandon()
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            self._file.fsync()
        except BaseException:
            self._broken = True
            self._abandon()
            raise
        self._file.close()
        self._ends[self.blocks_written] = self._file.size

    def rollback(self, blocks: int) -> int:
        """Cut the closed file back to `blocks` complete blocks (fewer if it never held them); returns
        the blocks kept. The last complete fragment ends the file: no torn bytes after it."""
        self._abandon()
        blocks = max([k for k in self._ends if k <= blocks], default=0)
        end = self._ends.get(blocks, 0)
        if end and os.path.getsize(self.file_path) != end:
            os.truncate(self.file_path, end)
            fd = os.open(self.file_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._ends = {k: v for k, v in self._ends.items() if k <= blocks}
        self.blocks_written = blocks
        self.frames_written = self.frames_of(blocks)
        return blocks


def read_frame_count(path: str, strict: bool = True) -> int:
    """Decode a video and count its frames (used by tests and `check`). strict=False counts the frames
    that decode before a damaged end (what a player shows of a file cut by SIGKILL)."""
    import av

    if not os.path.exists(path):
        return 0
    count = 0
    try:
        with av.open(path) as c:
            for _ in c.decode(video=0):
                count += 1
    except av.error.FFmpegError:
        if strict:
            raise
    return count
