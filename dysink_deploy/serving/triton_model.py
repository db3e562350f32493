"""The Triton Python-backend model of a DySink stream (copied into the model repository as model.py).

Decoupled: one request opens a stream and receives one response per block (FRAMES uint8
[T, H, W, 3], STATS: the block's stats.json entry as JSON), then an empty final response. Streams
run on threads of the model instance, so one instance serves up to `max_streams` at once; a request
beyond that gets an error response and the others go on. A cancelled request (client gone or
cancel) stops its stream at the next block boundary and frees its pages and buffers at once.
A request with CONTROL = "status" gets one response with the instance's accounting (JSON).

Requests: SEED int64 [1], BLOCKS int64 [1]; optional PROMPT_EMBEDS fp32 [text_len, text_dim] (the
tiny demo model has an embedded default) or PROMPT (text; the repository was made with --tokenizer
and the bundle has its umt5_encoder graph); SETTINGS (JSON of host-side stream settings); SCHEDULE
(JSON [{"frame": F, "prompt": TEXT} or {"frame": F, "prompt_seed": S} (a demo prompt), ...]);
CONTROL. Text travels as UTF-8 bytes in UINT8 tensors; STATS comes back the same way.
"""

from __future__ import annotations

import json
import os
import threading
import time

# The environment dysink_deploy is installed in (written by dysink-export triton-repo beside this file;
# Triton's Python stub starts from its own interpreter's paths). Missing or empty: the server's own.
_PATHS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python_path.json")
if os.path.isfile(_PATHS):
    import site

    with open(_PATHS) as _f:
        for _p in json.load(_f):
            if os.path.isdir(_p):
                site.addsitedir(_p)          # processes .pth files too (editable installs need them)

import numpy as np  # noqa: E402

from dysink_deploy.bundle import Bundle  # noqa: E402  (after the paths above)
from dysink_deploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from dysink_deploy.runtime.builder import open_streamer, resolve_run  # noqa: E402
from dysink_deploy.runtime.prompts import default_prompt_embeds  # noqa: E402
from dysink_deploy.runtime.spec import RunSpec  # noqa: E402
from dysink_deploy.text import PromptTokenizer  # noqa: E402

try:                                    # inside Triton
    import triton_python_backend_utils as pb_utils
except ImportError:                     # imported by tests / tools outside the server
    pb_utils = None


def _text(value: str) -> np.ndarray:
    return np.frombuffer(value.encode("utf-8"), dtype=np.uint8).copy()


def _tensor(name: str, array: np.ndarray):
    """An output tensor through DLPack (the stub's numpy path breaks with numpy 2: see repo.py)."""
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array).__dlpack__())


def _array(tensor) -> np.ndarray:
    """An input tensor as a numpy array of its own, through DLPack (the stub's as_numpy path breaks
    with numpy 2: see repo.py)."""
    try:
        return np.array(np.from_dlpack(tensor), copy=True)
    except (TypeError, AttributeError, BufferError):
        return np.array(tensor.as_numpy(), copy=True)


def _param(config: dict, key: str, default=None):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.bundle = Bundle.load(_param(config, "bundle"))
        self.provider = _param(config, "provider", "cpu")
        self.threads = int(_param(config, "threads", "1"))
        self.max_streams = int(_param(config, "max_streams", "2"))
        self.tokenizer = _param(config, "tokenizer", None)
        self.lock = threading.Lock()
        self.active: dict[str, dict] = {}
        self.served = self.refused = self.cancelled = 0
        # Sessions (the weights) are loaded once per instance and shared by its streams.
        self.shared = OnnxRuntimeBackend(self.bundle, providers=self.provider, threads=self.threads)
        self.logger = pb_utils.Logger if pb_utils is not None else None

    # -- requests ------------------------------------------------------------------------------
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                control = self._string(request, "CONTROL")
                if control is not None:
                    self._control(control, sender)
                    continue
                job = self._parse(request)
            except Exception as exc:  # noqa: BLE001 (every failure becomes one error response)
                self._fail(sender, str(exc))
                continue
            with self.lock:
                if len(self.active) >= self.max_streams:
                    self.refused += 1
                    full = True
                else:
                    full = False
                    stream_id = f"{request.request_id() or 'stream'}-{time.monotonic_ns()}"
                    self.active[stream_id] = {"blocks_done": 0, "seed": job["seed"], "pages_in_use": 0}
            if full:
                self._fail(sender, f"this instance already serves {self.max_streams} streams (its cap): retry later "
                                   "or start more instances (dysink-export triton-repo --instances N)")
                continue
            threading.Thread(target=self._stream, args=(stream_id, job, sender), daemon=True).start()
        return None

    def _string(self, request, name):
        """A text input: UTF-8 bytes in a UINT8 tensor (see repo.py on why not TYPE_STRING)."""
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            return None
        try:
            return _array(t).astype(np.uint8).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} must be UTF-8 text") from None

    def _scalar(self, request, name):
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            raise ValueError(f"the request lacks {name}")
        return int(_array(t).reshape(-1)[0])

    def _parse(self, request) -> dict:
        """A request -> its RunSpec, resolved now (every check runs before the stream's thread starts;
        RunSpec checks SEED)."""
        seed, blocks = self._scalar(request, "SEED"), self._scalar(request, "BLOCKS")
        if not 1 <= blocks <= 1_000_000:
            raise ValueError(f"BLOCKS must lie in 1..1000000, got {blocks}")
        settings = self._string(request, "SETTINGS")
        wanted = json.loads(settings) if settings else {}
        if not isinstance(wanted, dict):
            raise ValueError("SETTINGS must be a JSON object of stream settings")
        emb = pb_utils.get_input_tensor_by_name(request, "PROMPT_EMBEDS")
        text = self._string(request, "PROMPT")
        model = self.bundle.model
        prompt = None
        if text is not None:
            if emb is not None:
                raise ValueError("give PROMPT or PROMPT_EMBEDS, not both")
            prompt = self._encode(text)
        elif emb is None:
            if any(k != "random_seed" for k in self.bundle.manifest.get("checkpoints", {})):
                raise ValueError("a real model needs PROMPT_EMBEDS (umT5-XXL output)")
        else:
            prompt = _array(emb).astype(np.float32)
            if not np.isfinite(prompt).all():
                raise ValueError("PROMPT_EMBEDS hold NaN or Inf values")
        switches = []
        schedule = self._string(request, "SCHEDULE")
        if schedule:
            entries = json.loads(schedule)
            if not isinstance(entries, list):
                raise ValueError("SCHEDULE must be a JSON list of {\"frame\": F, \"prompt_seed\": S}")
            last = -1
            for e in entries:
                if not isinstance(e, dict) or len(set(e) & {"prompt", "prompt_seed"}) != 1 or \
                        set(e) - {"frame", "prompt", "prompt_seed"}:
                    raise ValueError("SCHEDULE entries are {\"frame\": F, \"prompt\": TEXT} or "
                                     "{\"frame\": F, \"prompt_seed\": S} (a demo prompt)")
                if not isinstance(e.get("frame"), int) or e["frame"] < max(last, 0):
                    raise ValueError(f"SCHEDULE frames must be integers >= 0 in non-decreasing order, got "
                                     f"{e.get('frame')!r} after {last}")
                last = e["frame"]
                embeds = (self._encode(e["prompt"]) if "prompt" in e
                          else default_prompt_embeds(model, seed=int(e["prompt_seed"])))
                switches.append((e["frame"], embeds))
        spec = RunSpec(backend="onnxruntime", bundle=str(self.bundle.path), ort_provider=self.provider,
                       threads=self.threads, seed=seed, blocks=blocks, prompt_embeds=prompt,
                       prompts=switches or None, settings=wanted)
        return {"seed": seed, "blocks": blocks, "spec": spec, "resolved": resolve_run(spec, bundle=self.bundle)}

    def _encode(self, text: str) -> np.ndarray:
        if not self.tokenizer:
            raise ValueError("text prompts need a repository made with --tokenizer DIR")
        ids, mask = PromptTokenizer(self.tokenizer)(text)
        return self.shared.encode_text(ids, mask)

    # -- one stream -----------------------------------------------------------------------------
    def _stream(self, stream_id: str, job: dict, sender):
        backend = None
        try:
            streamer, _ = open_streamer(job["spec"], resolved=job["resolved"], sessions=self.shared.sessions)
            backend = streamer.backend
            for _ in range(job["blocks"]):
                if sender.is_cancelled():
                    with self.lock:
                        self.cancelled += 1
                    return
                record = streamer.step()
                with self.lock:
                    self.active[stream_id].update(blocks_done=record.index + 1, pages_in_use=streamer.pages.in_use)
                frames = _tensor("FRAMES", np.ascontiguousarray(record.frames))
                stats = _tensor("STATS", _text(json.dumps(record.to_json())))
                sender.send(pb_utils.InferenceResponse(output_tensors=[frames, stats]))
            with self.lock:
                self.served += 1
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001
            self._fail(sender, f"stream stopped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        finally:
            if backend is not None:
                backend.close()          # the stream's pools and caches go now
            with self.lock:
                self.active.pop(stream_id, None)

    def _control(self, control: str, sender):
        if control != "status":
            self._fail(sender, f"unknown CONTROL {control!r}; the one control is \"status\"")
            return
        with self.lock:
            status = {"active_streams": len(self.active), "max_streams": self.max_streams,
                      "streams": list(self.active.values()), "served": self.served, "refused": self.refused,
                      "cancelled": self.cancelled}
        out = _tensor("STATS", _text(json.dumps(status)))
        sender.send(pb_utils.InferenceResponse(output_tensors=[out]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _fail(self, sender, message: str):
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.shared.close()
