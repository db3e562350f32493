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

from ..config import ModelConfig, StreamConfig, model_preset
from ..cli.common import exit_code, signals_deferred
from ..errors import DysinkError
from .report import plot_timeline, write_stats
from .stream import Streamer
from .video import VideoWriter

OUTPUT_FILES = ("video.mp4", "stats.json", "timeline.png")
LOCK_NAME = ".dysink-run.lock"


def lock_out_dir(out: str):
    """An exclusive lock on --out for this run (released when the process ends); a second run is
    refused with one line naming the holder's pid. Returns the open lock file (keep it)."""
    import fcntl

    path = os.path.join(out, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DysinkError(f"--out {out!r} is in use by another dysink-run (pid {holder}); wait for it or choose "
                          "another directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
FPS = 16  # Wan2.1's frame rate


def blocks_for_seconds(seconds: float, block_frames: int = 3, fps: int = FPS) -> int:
    """Blocks needed for `seconds` of video: the first block gives 4*B-3 frames, later ones 4*B."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DysinkError(f"--seconds must be a finite number > 0, got {seconds}")
    per_block = 4 * block_frames
    return max(1, math.ceil((seconds * fps + 3) / per_block))


def default_prompt_embeds(cfg: ModelConfig, seed: int = 1234) -> np.ndarray:
    """The embedded default 'prompt' of the demo: fixed pseudo-random umT5-like rows.

    Only meaningful for random-weight demo models; a real model needs real
    umT5 embeddings (--prompt-embeds).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    emb = (rng.standard_normal((cfg.dit.text_len, cfg.dit.text_dim)) * 0.2).astype(np.float32)
    emb[cfg.dit.text_len // 4:] = 0.0  # umT5 outputs are zero past the prompt's tokens
    return emb


def load_prompt_embeds(path: str, cfg: ModelConfig) -> np.ndarray:
    """A .safetensors file holding exactly one float tensor [text_len, text_dim] (or [1, ...])."""
    if not os.path.isfile(path):
        raise DysinkError(f"--prompt-embeds {path!r} does not exist or is not a file")
    if not path.endswith(".safetensors"):
        raise DysinkError(f"--prompt-embeds {path!r} must be a .safetensors file holding one [{cfg.dit.text_len}, "
                          f"{cfg.dit.text_dim}] umT5 output tensor")
    try:
        from safetensors.numpy import load_file
        tensors = load_file(path)
    except Exception as exc:
        raise DysinkError(f"cannot read --prompt-embeds {path!r} ({str(exc).splitlines()[0][:160]}); "
                          "it must be a valid .safetensors file") from None
    if len(tensors) != 1:
        raise DysinkError(f"--prompt-embeds {path!r} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
                          "expected exactly one")
    (name, arr), = tensors.items()
    want = (cfg.dit.text_len, cfg.dit.text_dim)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != want:
        raise DysinkError(f"--prompt-embeds tensor {name!r} has shape {list(arr.shape)}, expected {list(want)} "
                          "(umT5-XXL output, padded to 512 tokens)")
    if arr.dtype.kind != "f":
        raise DysinkError(f"--prompt-embeds tensor {name!r} has dtype {arr.dtype}, expected a float dtype "
                          "(float32, float16 or bfloat16)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DysinkError(f"--prompt-embeds tensor {name!r} contains NaN or Inf values")
    return arr


def load_prompt_schedule(path: str, cfg: ModelConfig, encode=None) -> list[tuple[int, np.ndarray]]:
    """--prompts FILE.json: [{"frame": F, "prompt_embeds": "x.safetensors"} or {"frame": F, "prompt":
    "text"}, ...], frames in latent frames, non-decreasing; embeddings files relative to the
    schedule's folder; text through `encode(text) -> embeddings`. -> [(frame, embeds)]."""
    from ..jsonfile import read_json

    data = read_json(path, "--prompts", 1 << 20, "prompt schedule")
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if not isinstance(data, list) or not data:
        raise DysinkError(f"--prompts {path!r} must hold a non-empty JSON list of "
                          '{"frame": N, "prompt_embeds": "FILE.safetensors"} entries')
    out: list[tuple[int, np.ndarray]] = []
    folder = os.path.dirname(os.path.abspath(path))
    for i, entry in enumerate(data):
        where = f"--prompts {path!r} entry {i}"
        if not isinstance(entry, dict):
            raise DysinkError(f"{where} must be an object with frame and prompt_embeds")
        unknown = sorted(set(entry) - {"frame", "prompt_embeds", "prompt"})
        if unknown:
            raise DysinkError(f"{where} has unknown key(s) {', '.join(unknown)}; use frame and prompt_embeds")
        frame = entry.get("frame")
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise DysinkError(f"{where}: frame must be an integer >= 0 (a latent frame), got {frame!r}")
        if out and frame < out[-1][0]:
            raise DysinkError(f"{where}: frames must not decrease ({frame} after {out[-1][0]})")
        if ("prompt" in entry) == ("prompt_embeds" in entry):
            raise DysinkError(f"{where} needs exactly one of prompt (text) and prompt_embeds (a .safetensors file)")
        if "prompt" in entry:
            if not isinstance(entry["prompt"], str):
                raise DysinkError(f"{where}: prompt must be text, got {entry['prompt']!r}")
            if encode is None:
                raise DysinkError(f"{where}: a text prompt needs --tokenizer DIR (and --text-encoder for real weights)")
            out.append((frame, encode(entry["prompt"])))
            continue
        file = entry.get("prompt_embeds")
        if not isinstance(file, str) or not file:
            raise DysinkError(f"{where}: prompt_embeds must be a .safetensors file name, got {file!r}")
        out.append((frame, load_prompt_embeds(os.path.join(folder, file), cfg)))
    return out


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


def _finish(writer, bar, stats, stats_path, run_config, out) -> None:
    """Close the video and write stats.json and timeline.png for the blocks done; write errors here
    (a full disk) cannot lose more than they already have, so they are not raised again."""
    try:
        writer.close()
    except OSError:
        pass
    if bar is not None:
        bar.close()
    if stats["blocks"]:
        try:
            write_stats(stats_path, stats["config"], stats["blocks"][:writer.durable_blocks], _extra(stats))
            plot_timeline(stats, os.path.join(out, "timeline.png"))
        except OSError:
            pass


def stream_to_dir(streamer: Streamer, model: ModelConfig, stream: StreamConfig, blocks: int, out: str,
                  run_config: dict, progress: bool = True, fps: int = FPS) -> RunResult:
    """Run `blocks` blocks and write the outputs. Ctrl-C stops cleanly after closing the files."""
    if blocks < 1:
        raise DysinkError(f"--blocks must be >= 1, got {blocks}")
    stats = {"config": run_config, "blocks": [], "t0": time.perf_counter()}
    stats_path = os.path.join(out, "stats.json")
    writer = VideoWriter(os.path.join(out, "video.mp4"), stream.width, stream.height, fps=fps)
    t0 = time.perf_counter()
    interrupted = False
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=blocks, unit="block", desc=f"{model.name} [{streamer.backend.name}]")
    try:
        for record in streamer.blocks(blocks):
            with signals_deferred():        # a block's frames and its stats entry go together
                writer.write_block(record.frames)
                stats["blocks"].append(record.to_json())
            # Only the blocks already complete in the video: a SIGKILL or power loss leaves a
            # stats.json that lists exactly what decodes (see video.py).
            write_stats(stats_path, run_config, stats["blocks"][:writer.durable_blocks], _extra(stats))
            if bar is not None:
                bar.set_postfix(bank=streamer.bank.size, sinks=len(record.retrieved))
                bar.update(1)
    except KeyboardInterrupt as exc:      # Ctrl-C, or SIGTERM / SIGHUP (cli.common.StopSignal)
        interrupted = True
        code = exit_code(exc)
    except OSError as exc:                # disk full, I/O error: stop now, keep what is written
        _finish(writer, bar, stats, stats_path, run_config, out)
        where = exc.filename or os.path.join(out, "video.mp4")
        raise DysinkError(f"{exc.strerror or exc} writing {where} ({len(stats['blocks'])} blocks complete); "
                          "free space or choose another --out") from None
    except BaseException:
        _finish(writer, bar, stats, stats_path, run_config, out)
        raise
    _finish(writer, bar, stats, stats_path, run_config, out)
    return RunResult(out=out, blocks=len(stats["blocks"]), frames=writer.frames_written,
                     seconds=time.perf_counter() - t0, interrupted=interrupted, stats=stats,
                     exit_code=code if interrupted else 0)
