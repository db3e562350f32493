"""The bundle manifest: what `dysink-export` wrote, and the checks before anything uses it.

Torch-free (numpy/json/hashlib): the runtime loads bundles without PyTorch.

A bundle is a directory:
    bundle.json              this manifest
    <graph>.onnx             one file per graph of `graphs.graph_specs`
    <graph>.onnx.data        external weights, only for a graph over 2 GB

`Bundle.load` refuses a bundle that another format version wrote, that was
built for another model / stream configuration / precision, whose I/O specs
differ from this version's contract, or whose files are missing or altered,
with one line saying what to rebuild (a `DysinkError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import (MODEL_PRESETS, ModelConfig, StreamConfig, model_config_from_dict, model_preset,
                     stream_config_from_dict)
from .errors import DysinkError
from .graphs import (BANK_PLACEMENTS, PRECISIONS, VAE_LAYOUTS, GraphSpec, TensorSpec, check_encoder_frames,
                     check_kv_cache_dtype, graph_specs, resolve_vae_layout)
from .jsonfile import strict_loads
from .manifest_fields import field_type_problem

# Bump whenever a graph's meaning or I/O changes, so older bundles are refused
# with a rebuild hint instead of running with other semantics.
#   1: first release
#   2: GatedSinkAttention gained `fixed_sinks`; vae_decode_first takes z only
#   3: dit_step takes the timestep sinusoid `t_freq` (no float64 in graphs); default opset 20, IR 9
#   4: retrieve's query_valid is int32 (TensorRT plugin I/O cannot be BOOL); GatedSinkAttention
#      treats a page id outside [0, P) as an empty slot
BUNDLE_FORMAT_VERSION = 4
MANIFEST_NAME = "bundle.json"
MAX_MANIFEST_BYTES = 16 << 20

# Stream settings baked into the graphs (shapes, node attributes). The rest
# (dedup threshold, schedule, eviction) is host logic and may change freely.
GRAPH_STREAM_FIELDS = ("height", "width", "block_frames", "local_attn_size", "sink_size", "top_k",
                       "gate_threshold", "bank_capacity", "feature_mode", "sink_kv_bf16")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def export_flags(model: ModelConfig, stream: StreamConfig, precision: str,
                 model_source: str | os.PathLike | None = None, checkpoints: Mapping[str, Any] | None = None,
                 encoder_frames: Iterable[int] = (), interactive: bool = False,
                 text_encoder: Mapping[str, Any] | None = None) -> list[str]:
    """`dysink-export onnx` flags that rebuild a bundle for (model, stream, precision).

    A preset model is named with --model; any other with --model-config `model_source` (a JSON file
    holding it: the bundle's own bundle.json works). `checkpoints`: the manifest's record of the
    weights (files and EMA choice, or the random seed), repeated as flags."""
    if MODEL_PRESETS.get(model.name) == model:
        flags = ["--model", model.name]
    else:
        flags = ["--model-config", str(model_source) if model_source else "MODEL_CONFIG.json"]
    flags += ["--precision", precision]
    for key, flag in (("dit", "--checkpoint"), ("lora", "--lora"), ("vae", "--vae"), ("pe", "--pe")):
        if checkpoints and checkpoints.get(key):
            flags += [flag, str(checkpoints[key])]
    if checkpoints and checkpoints.get("use_ema"):
        flags.append("--use-ema")
    if checkpoints and checkpoints.get("random_seed"):
        flags += ["--seed", str(checkpoints["random_seed"])]
    default = model.default_stream() if model.name in MODEL_PRESETS else StreamConfig()
    for name in GRAPH_STREAM_FIELDS:
        value = getattr(stream, name)
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    if isinstance(encoder_frames, (list, tuple)):
        for n in encoder_frames:
            flags += ["--encoder-frames", str(n)]
    if interactive:
        flags.append("--interactive")
    if isinstance(text_encoder, Mapping):
        flags += ["--text-encoder-preset", str(text_encoder.get("preset"))]
        if text_encoder.get("checkpoint"):
            flags += ["--text-encoder", str(text_encoder["checkpoint"])]
    return flags


def rebuild_command(model: ModelConfig, stream: StreamConfig, precision: str, out: str | os.PathLike,
                    model_source: str | os.PathLike | None = None, checkpoints: Mapping[str, Any] | None = None,
                    overwrite: bool | None = None, encoder_frames: Iterable[int] = (),
                    interactive: bool = False, text_encoder: Mapping[str, Any] | None = None,
                    kv_cache_dtype: str = "auto", bank_placement: str = "device", vae_layout: str = "auto") -> str:
    """The export command for (model, stream, precision) into `out`; --overwrite when `out` exists
    (default: looked up), since the command would otherwise refuse it."""
    if overwrite is None:
        overwrite = os.path.lexists(out)
    manifest = os.path.join(out, MANIFEST_NAME)
    if model_source is None and os.path.isfile(manifest) and not os.path.islink(manifest):
        try:                                    # the bundle's own manifest, if it holds this very model
            if os.path.getsize(manifest) <= MAX_MANIFEST_BYTES:
                with open(manifest, encoding="utf-8") as f:
                    if json.load(f).get("model") == json.loads(json.dumps(model.to_dict())):
                        model_source = manifest
        except (OSError, ValueError, RecursionError, AttributeError):
            pass
    return shlex.join(["dysink-export", "onnx", *export_flags(model, stream, precision, model_source, checkpoints, encoder_frames, interactive,
                                    text_encoder),
                       *(["--kv-cache-dtype", str(kv_cache_dtype)] if kv_cache_dtype != "auto" else []),
                       *(["--bank-placement", str(bank_placement)] if bank_placement != "device" else []),
                       *(["--vae-layout", str(vae_layout)]
                         if vae_layout in VAE_LAYOUTS and vae_layout != "auto"
                         and vae_layout != resolve_vae_layout("auto", precision) else []),
                       "--out", str(out), *(["--overwrite"] if overwrite else [])])


def _preset_names() -> set[str]:
    return set(MODEL_PRESETS)


def graph_stream_diff(built: StreamConfig, wanted: StreamConfig) -> list[str]:
    return [f"{n}={getattr(built, n)!r} (wanted {getattr(wanted, n)!r})"
            for n in GRAPH_STREAM_FIELDS if getattr(built, n) != getattr(wanted, n)]


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def write_manifest(directory: str | os.PathLike, model: ModelConfig, stream: StreamConfig, precision: str,
                   graphs: Mapping[str, Mapping[str, Any]], kind: str = "onnx",
                   extra: Mapping[str, Any] | None = None, encoder_frames: Iterable[int] = (),
                   interactive: bool = False) -> Path:
    """... `extra["text_encoder"]` (a dict) adds the umt5_encoder graph to the contract."""
    """Write `bundle.json` for the files already in `directory`; returns its path.

    `graphs[name]` holds at least "file" (relative path) and optionally
    "external_data" (relative paths) and any other per-graph fields (kept as
    given). Checksums, sizes and the I/O specs are filled in here: the specs
    from `graph_specs(model, stream, precision)`, the contract every backend binds.
    """
    directory = Path(directory)
    encoder_frames = check_encoder_frames(list(encoder_frames))
    specs = graph_specs(model, stream, precision, encoder_frames, interactive,
                        text_encoder=bool(extra and extra.get("text_encoder")),
                        kv_cache_dtype=(extra or {}).get("kv_cache_dtype", "auto"),
                        bank_placement=(extra or {}).get("bank_placement", "device"))
    entries = {}
    for name, info in graphs.items():
        if name not in specs:
            raise ValueError(f"graph {name!r} is not part of the contract ({', '.join(specs)})")
        info = dict(info)
        rel = info.pop("file")
        data = [{"file": d, "sha256": sha256_file(directory / d), "bytes": (directory / d).stat().st_size}
                for d in info.pop("external_data", [])]
        entries[name] = {
            "file": rel,
            "sha256": sha256_file(directory / rel),
            "bytes": (directory / rel).stat().st_size,
            "external_data": data,
            "inputs": [t.to_dict() for t in specs[name].inputs],
            "outputs": [t.to_dict() for t in specs[name].outputs],
            **info,
        }
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "kind": kind,
        "precision": precision,
        "model": model.to_dict(),
        "stream": stream.to_dict(),
        "graphs": entries,
        **({"encoder_frames": list(encoder_frames)} if encoder_frames else {}),
        **({"interactive": True} if interactive else {}),
        **(dict(extra) if extra else {}),
    }
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GraphEntry:
    name: str
    file: str
    sha256: str
    bytes: int
    external_data: tuple[dict, ...]
    spec: GraphSpec
    info: dict  # every field of the manifest entry, as written

    @property
    def total_bytes(self) -> int:
        return self.bytes + sum(int(d["bytes"]) for d in self.external_data)


def _spec_from(name: str, entry: Mapping[str, Any]) -> GraphSpec:
    return GraphSpec(name, tuple(TensorSpec.from_dict(t) for t in entry["inputs"]),
                     tuple(TensorSpec.from_dict(t) for t in entry["outputs"]))


class Bundle:
    """A validated bundle. Use `Bundle.load`; accessors: `.model`, `.stream`,
    `.precision`, `.specs` (name -> GraphSpec), `.graphs` (name -> GraphEntry),
    `.graph_path(name)`."""

    def __init__(self, path: Path, manifest: dict, model: ModelConfig, stream: StreamConfig,
                 precision: str, graphs: dict[str, GraphEntry]):
        self.path, self.manifest = path, manifest
        self.model, self.stream, self.precision = model, stream, precision
        self.graphs = graphs

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def specs(self) -> dict[str, GraphSpec]:
        return {name: g.spec for name, g in self.graphs.items()}

    @property
    def text_encoder(self) -> dict | None:
        """The umt5_encoder graph's record ({"preset", "checkpoint", "random_seed"}), if exported."""
        rec = self.manifest.get("text_encoder")
        return rec if isinstance(rec, dict) else None

    @property
    def bank_placement(self) -> str:
        """device, or host: the dit_step pools hold only the device slots (runtime/host_bank.py)."""
        return self.manifest.get("bank_placement", "device")

    @property
    def vae_layout(self) -> str:
        """The VAE graphs' inner layout (channels | frames; bundles made before the field are channels)."""
        return self.manifest.get("vae_layout", "channels")

    @property
    def kv_cache_dtype(self) -> str:
        """The K/V pages' storage the dit_step graph was exported for (auto | bf16 | fp8 | int8)."""
        return self.manifest.get("kv_cache_dtype", "auto")

    @property
    def interactive(self) -> bool:
        """Exported with --interactive (the dit_recache graph of prompt switches)."""
        return self.manifest.get("interactive") is True

    def require_interactive(self) -> None:
        """Refuse prompt switches on a bundle exported without the dit_recache graph they need."""
        if not self.interactive:
            raise DysinkError(f"bundle {self.path} has no dit_recache graph, which prompt switches need; export it "
                              f"with --interactive: {self.rebuild_command()} --interactive")

    @property
    def encoder_frames(self) -> tuple[int, ...]:
        """Extra memory_encoder_tN frame counts exported with --encoder-frames."""
        return tuple(self.manifest.get("encoder_frames") or ())

    def graph_path(self, name: str) -> Path:
        if name not in self.graphs:
            raise DysinkError(f"bundle {self.path} has no graph {name!r} (it has {', '.join(self.graphs)}); "
                              f"rebuild it: {self.rebuild_command()}")
        return self.path / self.graphs[name].file

    def rebuild_command(self) -> str:
        return rebuild_command(self.model, self.stream, self.precision, self.path,
                               checkpoints=self.manifest.get("checkpoints"),
                               encoder_frames=self.manifest.get("encoder_frames") or (),
                               interactive=self.interactive, text_encoder=self.manifest.get("text_encoder"),
                               kv_cache_dtype=self.kv_cache_dtype, bank_placement=self.bank_placement,
                               vae_layout=self.vae_layout)

    @classmethod
    def load(cls, path: str | os.PathLike, expect_model: ModelConfig | str | None = None,
             expect_stream: StreamConfig | None = None, expect_precision: str | None = None,
             verify_hashes: bool = True, require: Iterable[str] | None = None) -> "Bundle":
        """Read and validate `path/bundle.json` and the files it names.

        expect_*: refuse a bundle built for anything else (stream: only the
        fields baked into graphs, `GRAPH_STREAM_FIELDS`, are compared).
        verify_hashes: sha256 of every file (off: presence and size only).
        require: graph names that must be present (default: every graph of the contract).
        """
        root = Path(path)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            what = "does not exist" if not root.exists() else f"has no {MANIFEST_NAME}"
            raise DysinkError(f"bundle {root} {what}; export one with: dysink-export onnx --model PRESET "
                              f"--precision fp32|fp16|bf16 --out {root}")
        if manifest_path.is_symlink():
            raise DysinkError(f"bundle {root}: {MANIFEST_NAME} is a symbolic link; a bundle holds its files itself: "
                              f"re-export it with dysink-export onnx ... --out {root}")
        try:
            if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
            manifest = strict_loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except RecursionError:
            raise DysinkError(f"bundle {root}: {MANIFEST_NAME} is nested too deeply to be a manifest; "
                              f"re-export it with dysink-export onnx ... --out {root}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DysinkError(f"bundle {root}: {MANIFEST_NAME} is unreadable ({exc}); "
                              f"re-export it with dysink-export onnx ... --out {root}") from None

        version = manifest.get("format_version")
        if version != BUNDLE_FORMAT_VERSION:
            raise DysinkError(f"bundle {root} has format version {version!r}, this dysink-deploy reads "
                              f"version {BUNDLE_FORMAT_VERSION}; rebuild it with this version's dysink-export onnx"
                              f"{_hint_flags(manifest, root)}")
        problem = field_type_problem(manifest)       # before any field is used (no AttributeError later)
        if problem:
            hint = _hint_flags(manifest, root)
            raise DysinkError(f"bundle {root}: {MANIFEST_NAME} is malformed ({problem}); re-export the bundle"
                              f"{hint if hint.startswith(':') else ': dysink-export onnx' + hint}")
        try:
            model = model_config_from_dict(manifest["model"])
            stream = stream_config_from_dict(manifest["stream"])
            precision = manifest["precision"]
            raw_graphs = manifest["graphs"]
            if precision not in PRECISIONS or not isinstance(raw_graphs, dict):
                raise ValueError(f"precision {precision!r}")
        except (DysinkError, KeyError, TypeError, ValueError) as exc:
            raise DysinkError(f"bundle {root}: malformed {MANIFEST_NAME} ({exc}); "
                              f"re-export it with dysink-export onnx ... --out {root}") from None

        # -- the configuration the caller wants -------------------------------------
        wanted_model = model_preset(expect_model) if isinstance(expect_model, str) else expect_model
        if wanted_model is not None and wanted_model.to_dict() != model.to_dict():
            raise DysinkError(
                f"bundle {root} was built for model {model.name!r}, not for the requested model "
                f"{wanted_model.name!r}{'' if wanted_model.name != model.name else ' (same name, other settings)'}; "
                f"rebuild it: {rebuild_command(wanted_model, expect_stream or stream, expect_precision or precision, root)}")
        if expect_stream is not None and (diff := graph_stream_diff(stream, expect_stream)):
            raise DysinkError(
                f"bundle {root} was built for another stream config ({'; '.join(diff)}); "
                f"rebuild it: {rebuild_command(model, expect_stream, expect_precision or precision, root)}")
        if expect_precision is not None and expect_precision != precision:
            raise DysinkError(
                f"bundle {root} holds {precision} graphs, {expect_precision} was requested; "
                f"rebuild it: {rebuild_command(model, stream, expect_precision, root)}")

        # -- the graph contract --------------------------------------------------------
        interactive = manifest.get("interactive") is True
        rebuild = rebuild_command(model, stream, precision, root, checkpoints=manifest.get("checkpoints"),
                                  encoder_frames=manifest.get("encoder_frames") or (), interactive=interactive,
                                  text_encoder=manifest.get("text_encoder") if isinstance(manifest.get("text_encoder"), dict) else None,
                                  vae_layout=manifest.get("vae_layout", "channels"))
        try:
            kv_dtype = check_kv_cache_dtype(manifest.get("kv_cache_dtype", "auto"))
            placement = manifest.get("bank_placement", "device")
            if placement not in BANK_PLACEMENTS:
                raise ValueError(f"bank_placement must be one of {', '.join(BANK_PLACEMENTS)}, got {placement!r}")
            layout = manifest.get("vae_layout", "channels")
            if layout == "auto" or layout not in VAE_LAYOUTS:
                raise ValueError(f"vae_layout must be channels or frames, got {layout!r}")
        except (TypeError, ValueError) as exc:
            raise DysinkError(f"bundle {root}: malformed {MANIFEST_NAME} ({exc}); rebuild it: {rebuild}") from None
        try:
            expected = graph_specs(model, stream, precision, manifest.get("encoder_frames") or (), interactive,
                                   text_encoder=isinstance(manifest.get("text_encoder"), dict),
                                   kv_cache_dtype=kv_dtype, bank_placement=placement)
        except (TypeError, ValueError) as exc:
            raise DysinkError(f"bundle {root}: malformed {MANIFEST_NAME} (encoder_frames: {exc}); "
                              f"rebuild it: {rebuild}") from None
        unknown = sorted(set(raw_graphs) - set(expected))
        if unknown:
            raise DysinkError(f"bundle {root} has graph(s) {', '.join(unknown)} that this version does not know; "
                              f"rebuild it: {rebuild}")
        needed = list(expected) if require is None else list(require)
        missing = [n for n in needed if n not in raw_graphs]
        if missing:
            raise DysinkError(f"bundle {root} lacks graph(s) {', '.join(missing)}; rebuild it: {rebuild}")
        graphs: dict[str, GraphEntry] = {}
        for name, entry in raw_graphs.items():
            try:
                spec = _spec_from(name, entry)
                graphs[name] = GraphEntry(name, str(entry["file"]), str(entry["sha256"]), int(entry["bytes"]),
                                          tuple(entry.get("external_data", [])), spec, dict(entry))
            except (KeyError, TypeError, ValueError) as exc:
                raise DysinkError(f"bundle {root}: malformed entry for graph {name} ({exc}); "
                                  f"rebuild it: {rebuild}") from None
            if spec != expected[name]:
                raise DysinkError(f"bundle {root}: graph {name}'s inputs/outputs differ from this version's "
                                  f"contract ({_first_spec_diff(spec, expected[name])}); rebuild it: {rebuild}")

        # -- the files ---------------------------------------------------------------------
        for name, g in graphs.items():
            try:
                files = [(g.file, g.sha256, g.bytes)] + [
                    (str(d["file"]), str(d["sha256"]), int(d["bytes"])) for d in g.external_data]
            except (KeyError, TypeError, ValueError) as exc:
                raise DysinkError(f"bundle {root}: malformed external_data of graph {name} ({exc!r}); "
                                  f"rebuild it: {rebuild}") from None
            for rel, digest, size in files:
                f = confined_file(root, rel, f"graph {name}", rebuild)
                if f is None:
                    raise DysinkError(f"bundle {root} is missing {rel} (graph {name}); rebuild it: {rebuild}")
                if f.stat().st_size != size or (verify_hashes and sha256_file(f) != digest):
                    raise DysinkError(f"bundle {root}: {rel} (graph {name}) does not match its sha256 in "
                                      f"{MANIFEST_NAME} (changed or truncated); rebuild it: {rebuild}")
        return cls(root, manifest, model, stream, precision, graphs)


def confined_file(root: Path, rel: object, what: str, rebuild: str) -> Path | None:
    """The file a manifest names, if it is a plain relative path to a regular file inside `root`
    (no '..', no absolute path, no symlink anywhere on the way); None if it does not exist.
    Checked before anything is opened, and the refusal does not depend on whether an outside
    file exists (no probing through a crafted manifest)."""
    text = rel if isinstance(rel, str) else ""
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or ".." in parts or "\\" in text or "\x00" in text:
        raise DysinkError(f"bundle {root}: {what} names {rel!r}, which is not a plain path inside the bundle; "
                          f"rebuild it: {rebuild}")
    here = root
    for i, part in enumerate(parts):
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DysinkError(f"bundle {root}: cannot read {text} ({exc.strerror}); rebuild it: {rebuild}") from None
        if stat.S_ISLNK(st.st_mode):
            raise DysinkError(f"bundle {root}: {text} ({what}) is a symbolic link; a bundle holds its files itself: "
                              f"rebuild it: {rebuild}")
        last = i == len(parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            raise DysinkError(f"bundle {root}: {text} ({what}) is not a regular file; rebuild it: {rebuild}")
        if not last and not stat.S_ISDIR(st.st_mode):
            return None
    return here


def _hint_flags(manifest: dict, root: Path) -> str:
    """Best-effort rebuild flags from a manifest we otherwise refuse."""
    try:
        model = model_config_from_dict(manifest["model"])
        stream = stream_config_from_dict(manifest["stream"])
        return ": " + rebuild_command(model, stream, manifest["precision"], root)
    except Exception:  # noqa: BLE001 (a hint only)
        return f" ... --out {root}"


def _first_spec_diff(got: GraphSpec, want: GraphSpec) -> str:
    for kind, a, b in (("input", got.inputs, want.inputs), ("output", got.outputs, want.outputs)):
        if len(a) != len(b):
            return f"{len(a)} {kind}s, expected {len(b)}"
        for x, y in zip(a, b):
            if x != y:
                return f"{kind} {x.name} {list(x.shape)} {x.dtype}, expected {y.name} {list(y.shape)} {y.dtype}"
    return "names differ"
