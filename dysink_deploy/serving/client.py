"""`dysink-client`: stream one DySink video from a Triton server over gRPC into a directory, like
dysink-run (video.mp4 written block by block, stats.json after every block)."""

from __future__ import annotations

import json
import os
import queue
import time

import numpy as np

from ..errors import DysinkError
from ..runtime.report import write_stats
from ..runtime.run import check_out_dir, open_out_dir
from ..runtime.video import VideoWriter

MODEL_NAME = "dysink"


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ImportError:
        raise DysinkError("dysink-client needs tritonclient: pip install 'dysink-deploy[serve]'") from None
    return grpcclient, InferenceServerException


def _inputs(grpcclient, seed: int, blocks: int, prompt_embeds=None, settings=None, schedule=None, control=None,
            prompt: str | None = None):
    def scalar(name, value):
        t = grpcclient.InferInput(name, [1], "INT64")
        t.set_data_from_numpy(np.array([value], dtype=np.int64))
        return t

    def text(name, value):
        data = np.frombuffer(value.encode("utf-8"), dtype=np.uint8)       # UINT8, not BYTES: see repo.py
        t = grpcclient.InferInput(name, [len(data)], "UINT8")
        t.set_data_from_numpy(data)
        return t

    if control is not None:
        return [scalar("SEED", 0), scalar("BLOCKS", 1), text("CONTROL", control)]
    out = [scalar("SEED", seed), scalar("BLOCKS", blocks)]
    if prompt_embeds is not None:
        emb = np.ascontiguousarray(prompt_embeds)
        from tritonclient.utils import np_to_triton_dtype

        t = grpcclient.InferInput("PROMPT_EMBEDS", list(emb.shape), np_to_triton_dtype(emb.dtype))
        t.set_data_from_numpy(emb)
        out.append(t)
    if prompt is not None:
        out.append(text("PROMPT", prompt))
    if settings:
        out.append(text("SETTINGS", json.dumps(settings)))
    if schedule:
        out.append(text("SCHEDULE", json.dumps(schedule)))
    return out


class StreamClient:
    """One gRPC connection; `stream(...)` yields (frames uint8 [T, H, W, 3], stats dict) per block."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        self.grpcclient, self.error_type = _grpc()
        self.url, self.timeout_s = url, timeout_s
        try:
            self.client = self.grpcclient.InferenceServerClient(url=url)
            ready = self.client.is_model_ready(MODEL_NAME)
        except Exception as exc:  # noqa: BLE001 (connection errors come in several types)
            raise DysinkError(f"cannot reach a Triton server at {url} ({str(exc).splitlines()[0][:120]}); "
                              "start one with dysink-serve --repo REPO") from None
        if not ready:
            raise DysinkError(f"the server at {url} has no ready model {MODEL_NAME!r}; is REPO from "
                              "dysink-export triton-repo?")

    def stream(self, seed: int, blocks: int, **kw):
        results: queue.Queue = queue.Queue()
        try:
            inputs = _inputs(self.grpcclient, seed, blocks, **kw)
        except self.error_type as exc:
            raise DysinkError(f"bad request: {exc.message()}") from None
        self.client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            self.client.async_stream_infer(MODEL_NAME, inputs, enable_empty_final_response=True)
            while True:
                try:
                    result, error = results.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise DysinkError(f"no response from {self.url} in {self.timeout_s:.0f} s") from None
                if error is not None:
                    raise DysinkError(f"server: {error.message() if hasattr(error, 'message') else error}")
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                names = {o.name for o in response.outputs}
                if "STATS" in names:
                    stats = result.as_numpy("STATS")
                    frames = result.as_numpy("FRAMES") if "FRAMES" in names else None
                    yield frames, json.loads(np.asarray(stats, dtype=np.uint8).tobytes().decode("utf-8"))
                if final is not None and final.bool_param:
                    return
        finally:
            self.client.stop_stream(cancel_requests=True)

    def status(self) -> dict:
        for _, stats in self.stream(0, 1, control="status"):
            return stats
        raise DysinkError("the server sent no status")

    def close(self) -> None:
        self.client.close()


def stream_to_dir(url: str, out: str, blocks: int, seed: int, overwrite: bool = False, **kw):
    """The client side of dysink-run: video.mp4 block by block, stats.json after every block. A dropped
    connection keeps the blocks received (playable) and raises one line."""
    check_out_dir(out, overwrite)
    client = StreamClient(url)
    lock = open_out_dir(out, overwrite)
    config = {"server": url, "seed": seed, "blocks": blocks, "settings": kw.get("settings") or {}}
    entries: list[dict] = []
    writer = None
    t0 = time.perf_counter()
    try:
        for frames, stats in client.stream(seed, blocks, **kw):
            if writer is None:
                writer = VideoWriter(os.path.join(out, "video.mp4"), frames.shape[2], frames.shape[1])
            writer.write_block(frames)
            entries.append(stats)
            write_stats(os.path.join(out, "stats.json"), config, entries[:writer.durable_blocks],
                        {"wall_s": round(time.perf_counter() - t0, 3)})
    finally:
        if writer is not None:
            writer.close()
            write_stats(os.path.join(out, "stats.json"), config, entries[:writer.durable_blocks],
                        {"wall_s": round(time.perf_counter() - t0, 3)})
        client.close()
        lock.close()
    return entries
