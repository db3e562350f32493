"""MP4 output written block by block.

The file is a fragmented MP4 (moov up front, one fragment per keyframe) and
every block starts on a keyframe, so whatever was written before an
interruption stays playable: no index has to be written at the end.

Durability (measured, PyAV 18 / FFmpeg's mov muxer): a fragment reaches the file
when the next keyframe arrives, so once block N's first frame is muxed, blocks
< N are complete on disk; `flush_packets` sends them to the OS at once and
`sync()` to the device. `durable_blocks` counts them: `stats.json` lists exactly
those while the run goes on, so even SIGKILL or a power loss leaves a video
that decodes every frame `stats.json` lists. `close()` completes the last block.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DysinkError


class VideoWriter:
    def __init__(self, path: str, width: int, height: int, fps: int = 16, crf: int = 18):
        import av  # PyAV: lazy so the runtime imports without it

        if width % 2 or height % 2:
            raise DysinkError(f"video size {width}x{height} must be even for yuv420p")
        self.path = path
        try:
            self._container = av.open(path, mode="w", format="mp4", options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"})
        except OSError as exc:
            raise DysinkError(f"cannot create {path!r} ({exc.strerror or exc}); choose a writable --out") from None
        stream = self._container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # zerolatency: no look-ahead, so each block's frames leave the encoder
        # (and reach the disk) with the next block's keyframe or at close.
        stream.options = {"crf": str(crf), "tune": "zerolatency", "preset": "veryfast"}
        self._stream = stream
        self._av = av
        self.frames_written = 0
        self.blocks_written = 0

    def write_block(self, frames: np.ndarray) -> None:
        """frames: uint8 [T, H, W, 3]. The block's first frame is a keyframe."""
        for i, arr in enumerate(frames):
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if i == 0:
                frame.pict_type = self._av.video.frame.PictureType.I
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1
        self.blocks_written += 1
        self.sync()

    @property
    def durable_blocks(self) -> int:
        """Blocks whose frames are complete in the file (all of them once closed)."""
        return self.blocks_written if self._container is None else max(0, self.blocks_written - 1)

    def sync(self) -> None:
        """Push what the muxer flushed to the storage device (power loss)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        self.sync()


def read_frame_count(path: str) -> int:
    """Decode a video and count its frames (used by tests and `check`)."""
    import av

    if not os.path.exists(path):
        return 0
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))
