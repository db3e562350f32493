"""Loading the released checkpoints into our modules.

Formats (ALGORITHM.md section 1):
- DiT base `stage1_base.pt`: a dict with `generator` and/or `generator_ema`,
  keys prefixed `model.` and sometimes containing `_fsdp_wrapped_module.`;
  also accepted: a plain state dict, or a .safetensors file.
- `stage2_lora.pt`: a dict with `generator_lora`, PEFT keys such as
  `base_model.model.blocks.0.self_attn.q.lora_A.weight` [r, in] and
  `...lora_B.weight` [out, r]; merged as W += alpha / rank * B @ A
  (rank and alpha come from the config: the file does not store them).
- `Wan2.1_VAE.pth`: a plain state dict of the whole VAE (we keep the decoder).
- `PE-Core-S16-384.pt`: tensors under `state_dict` / `weights` or at top level,
  keys prefixed `module.` or `visual.` (CLIP-style files).
Every `torch.load` uses weights_only=True: checkpoints are data, not code.
Files are memory-mapped (both formats), so checking keys and shapes of a
multi-GB file reads only its header and pickle, not its tensor data.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from .errors import DysinkError
from .jsonfile import strict_loads
from .models.pe_core import vision_state_dict
from .models.vae import decoder_state_dict_from_wan


class CheckpointError(DysinkError):
    pass


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------
# safetensors dtype names -> torch dtypes (those this torch build has).
_SAFETENSORS_DTYPES = {
    name: getattr(torch, attr) for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
        "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    }.items() if hasattr(torch, attr)
}


def _mmap_safetensors(p: Path) -> dict[str, Tensor]:
    """Memory-map a .safetensors file: tensors are views of a private mapping.

    `safetensors.torch.load_file` copies every tensor into memory; for a
    5.7 GB DiT that is seconds and gigabytes just to compare shapes. The
    format is an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets}} and the raw data, so mapping it is
    short. Any inconsistency raises ValueError (reported as a corrupt file).
    """
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"header of {n} bytes is longer than the file ({size} bytes): truncated?")
        header = strict_loads(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    base = 8 + n
    storage = torch.UntypedStorage.from_file(str(p), shared=False, nbytes=size)  # private: never written back
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has a malformed header entry {info!r}") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * itemsize or start < 0 or base + end > size:
            raise ValueError(f"tensor {name!r} ({info['dtype']} {shape}) does not fit bytes "
                             f"{start}..{end} of a {size - base}-byte data section: truncated?")
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, base + start, (end - start,))
        if (base + start) % itemsize:
            raw = raw.clone()  # unaligned (the format does not pad between tensors): copy this one
        out[name] = raw.view(dtype).reshape(shape)
    return out


def _why_unreadable(exc: Exception) -> str:
    """The informative line of a loading error (torch's are paragraphs)."""
    text = str(exc).strip()
    blocked = re.search(r"(?:Trying to load )?unsupported GLOBAL ([\w.]+)[^\n]*", text, re.IGNORECASE)
    if blocked and "WeightsUnpickler error:" not in text:
        # Code in the pickle (e.g. posix.system): name the global, never suggest weights_only=False.
        return ("it holds Python code or objects other than tensors, refused by weights_only=True: "
                f"{' '.join(blocked.group(0).split()).rstrip('.')}")
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        detail = " ".join(detail.split(". Please use", 1)[0].split())
        if "global" in detail.lower():
            # A pickled class or function: exactly what weights_only=True exists to refuse.
            return f"it holds Python objects other than tensors, refused by weights_only=True: {detail}"
        return f"not a valid PyTorch pickle: {detail}"
    # torch's messages are paragraphs: keep the first sentence.
    first = text.splitlines()[0].split(". ", 1)[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_tensor_file(path: str | os.PathLike, what: str) -> dict:
    """Read a .pt/.pth (weights_only, mmap) or .safetensors file; one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint {str(p)!r} does not exist or is not a file")
    try:
        if p.suffix == ".safetensors":
            obj = _mmap_safetensors(p)
        else:
            # mmap needs torch's zip format; legacy (pre-1.6) files are read into memory.
            obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as exc:  # corrupt, truncated, pickled code, ...
        raise CheckpointError(
            f"cannot read {what} checkpoint {str(p)!r} ({_why_unreadable(exc)}); expected a PyTorch "
            "state-dict file saved with tensors only, or .safetensors") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} checkpoint {str(p)!r} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def _tensors_only(state: object, what: str, path: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} checkpoint {path!r} holds a {type(state).__name__} where a state dict "
                              "was expected")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{what} checkpoint {path!r} contains no tensors at the expected place")
    return tensors


# ---------------------------------------------------------------------------
# DiT base (stage1)
# ---------------------------------------------------------------------------
# Wrapper modules insert these into every key of a raw module.state_dict().
_WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _unwrap(key: str) -> str:
    for infix in _WRAPPER_INFIXES:
        key = key.replace(infix, "")
    return key


def _strip_dit_key(key: str) -> str:
    key = _unwrap(key)
    for prefix in ("module.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def dit_state_dict(path: str, use_ema: bool = False) -> dict[str, Tensor]:
    """The DiT weights of a stage1 file (or a plain / safetensors state dict)."""
    obj = load_tensor_file(path, "DiT")
    if "generator" in obj or "generator_ema" in obj:
        key = "generator_ema" if use_ema else "generator"
        if key not in obj:
            other = "generator" if use_ema else "generator_ema"
            raise CheckpointError(f"DiT checkpoint {path!r} has no {key!r} entry (it has {other!r}); "
                                  f"{'drop' if use_ema else 'pass'} --use-ema")
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"DiT checkpoint {path!r}: {key!r} is not a state dict")
    elif use_ema:
        # A plain state dict has one set of weights: silently using it would hide the mistake.
        raise CheckpointError(f"DiT checkpoint {path!r} has no 'generator_ema' entry (it is a plain state "
                              "dict, not a stage1 training checkpoint); drop --use-ema")
    elif "generator_lora" in obj:
        raise CheckpointError(f"DiT checkpoint {path!r} is a stage2 LoRA file ('generator_lora'); pass it "
                              "with --lora and the stage1 base with --checkpoint")
    return {_strip_dit_key(k): v for k, v in _tensors_only(obj, "DiT", path).items()}


# ---------------------------------------------------------------------------
# stage2 LoRA
# ---------------------------------------------------------------------------
# PEFT's get_peft_model_state_dict drops the adapter name (`.default`); a raw
# module.state_dict() of a PEFT model keeps it. Both are accepted.
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


def _shape(t) -> list[int]:
    return list(t.shape)


@dataclass
class LoraReport:
    """What is wrong with a LoRA file for one model (rank and shapes from the model)."""

    what: str = "LoRA"
    pairs: int = 0                                        # targets with both A and B
    problems: list[tuple[str, str]] = field(default_factory=list)  # (label, "target: detail")
    uncovered: list[str] = field(default_factory=list)    # model Linear layers the file does not touch

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        # Same layout as KeyReport.lines(): an 11-character label, the component, the detail.
        return [f"{label:<11} {self.what}: {detail}" for label, detail in self.problems]

    def warning_lines(self) -> list[str]:
        return [f"{'not merged':<11} {self.what}: {t} (no LoRA for this layer: base weight used as is)"
                for t in self.uncovered]

    def summary(self) -> str:
        text = f"{self.what}: {self.pairs} A/B pairs, {len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}"
        if self.uncovered:
            text += f", {len(self.uncovered)} block Linear layers without LoRA (warning)"
        return text


def read_lora(path: str) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """A stage2 file as {target module: {'A': tensor, 'B': tensor}}, plus one description
    per key that is not a usable PEFT LoRA weight."""
    obj = load_tensor_file(path, "LoRA")
    lora = obj.get("generator_lora", obj)
    if not isinstance(lora, Mapping):
        raise CheckpointError(f"LoRA checkpoint {path!r}: 'generator_lora' is not a state dict")
    pairs: dict[str, dict[str, Tensor]] = {}
    bad: list[str] = []
    for key, value in _tensors_only(lora, "LoRA", path).items():
        m = _LORA_KEY.match(_unwrap(key))
        if not m:
            bad.append(f"{key} is not a PEFT LoRA weight "
                       "(expected e.g. base_model.model.blocks.0.self_attn.q.lora_A.weight)")
            continue
        ab = pairs.setdefault(m.group(1), {})
        if m.group(2) in ab:
            bad.append(f"{key} is a second lora_{m.group(2)} for {m.group(1)}")
            continue
        ab[m.group(2)] = value
    return pairs, bad


def check_lora(pairs: Mapping[str, Mapping[str, Tensor]], bad_keys: Iterable[str],
               model_shapes: Mapping[str, tuple[int, ...] | torch.Size], rank: int,
               targets: Iterable[str] = ()) -> LoraReport:
    """Every problem of a LoRA file against a model's parameter shapes (nothing is loaded).

    `pairs` and `bad_keys` come from `read_lora`.
    `targets`: the Linear layers the reference puts LoRA on (see `lora_targets`);
    those the file does not touch are reported as warnings, not problems:
    PEFT leaves such a layer's B at zero, so the base weight is used unchanged.
    """
    report = LoraReport()
    problems = report.problems
    problems.extend(("bad key", description) for description in bad_keys)
    for target, ab in sorted(pairs.items(), key=lambda item: natural_key(item[0])):
        if set(ab) != {"A", "B"}:
            have, lack = ("A", "B") if "A" in ab else ("B", "A")
            problems.append(("unpaired", f"{target} has lora_{have} but no lora_{lack}"))
            continue
        report.pairs += 1
        a, b = ab["A"], ab["B"]
        wkey = f"{target}.weight"
        for side, t in (("A", a), ("B", b)):
            if t.dtype not in WEIGHT_DTYPES:
                problems.append(("wrong dtype", f"{target}: lora_{side} is {_dtype_name(t.dtype)} (LoRA weights must "
                                                "be float16, bfloat16 or float32)"))
        if a.dim() != 2 or b.dim() != 2:
            problems.append(("mis-shaped", f"{target}: A {_shape(a)} and B {_shape(b)} must both be 2-D"))
            continue
        if a.shape[0] != b.shape[1]:
            problems.append(("rank", f"{target}: A {_shape(a)} and B {_shape(b)} disagree on the rank "
                                     f"({a.shape[0]} vs {b.shape[1]})"))
        elif a.shape[0] != rank:
            problems.append(("rank", f"{target}: the file has rank {a.shape[0]} (A {_shape(a)}), "
                                     f"the model config says {rank}"))
        if wkey not in model_shapes:
            problems.append(("no target", f"{target}: the model has no {wkey!r} to merge into"))
            continue
        w = tuple(model_shapes[wkey])
        if len(w) != 2 or (b.shape[0], a.shape[1]) != w:
            problems.append(("mis-shaped", f"{target}: B @ A is [{b.shape[0]}, {a.shape[1]}] "
                                           f"(A {_shape(a)}, B {_shape(b)}), the base weight is {list(w)}"))
    report.uncovered = sorted(set(targets) - set(pairs), key=natural_key)
    return report


def lora_targets(dit: nn.Module) -> list[str]:
    """The layers the reference puts LoRA on: every nn.Linear inside a transformer block
    (self_attn.q/k/v/o, cross_attn.q/k/v/o, ffn.0, ffn.2: 10 per block)."""
    return [name for name, m in dit.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")]


def merge_lora(state: dict[str, Tensor], path: str, rank: int, alpha: float) -> dict[str, Tensor]:
    """Merge a PEFT LoRA file into a DiT state dict (returns a new dict)."""
    pairs, bad = read_lora(path)
    report = check_lora(pairs, bad, {k: tuple(v.shape) for k, v in state.items()}, rank)
    if not report.ok:
        first = "; ".join(" ".join(line.split()) for line in report.lines()[:3])
        raise CheckpointError(f"LoRA checkpoint {path!r} does not fit this model ({report.summary()}: {first}); "
                              "check --model, or run `dysink-export verify-checkpoint` for the full list")
    bad = first_non_finite({f"{t}.lora_{side}": ab[side] for t, ab in pairs.items() for side in ab})
    if bad:
        raise CheckpointError(f"LoRA checkpoint {path!r} holds non-finite weights ({bad}): use an undamaged file")
    merged = dict(state)
    scale = alpha / rank
    for target, ab in pairs.items():
        wkey = f"{target}.weight"
        w = merged[wkey]
        # One rounding to the weight's dtype, after a float32 update, like the reference.
        merged[wkey] = (w.float() + scale * (ab["B"].float() @ ab["A"].float())).to(w.dtype)
    return merged


# ---------------------------------------------------------------------------
# VAE and PE-Core
# ---------------------------------------------------------------------------
def vae_state_dict(path: str) -> dict[str, Tensor]:
    obj = load_tensor_file(path, "VAE")
    state = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    return decoder_state_dict_from_wan(_tensors_only(state, "VAE", path))


def pe_state_dict(path: str) -> dict[str, Tensor]:
    obj = load_tensor_file(path, "PE-Core")
    for key in ("state_dict", "weights"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    return vision_state_dict(_tensors_only(obj, "PE-Core", path))


# ---------------------------------------------------------------------------
# Comparing and loading
# ---------------------------------------------------------------------------
# Weights may come in any of these (cast once to the model's dtype); an int8 or fp8 tensor holds
# quantised values whose scales are not in the file: casting it would give other weights, silently.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_problem(file_dtype, model_dtype) -> str | None:
    """Why a file tensor of `file_dtype` cannot fill a model tensor of `model_dtype` (None: it can)."""
    if model_dtype.is_floating_point:
        if file_dtype in WEIGHT_DTYPES:
            return None
        return (f"file {_dtype_name(file_dtype)}, model {_dtype_name(model_dtype)} (weights must be float16, "
                "bfloat16 or float32)")
    return None if file_dtype == model_dtype else f"file {_dtype_name(file_dtype)}, model {_dtype_name(model_dtype)}"


@dataclass
class KeyReport:
    """Differences between a checkpoint and a module's parameters."""

    what: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file [..] vs model [..]"
    wrong_dtype: list[str] = field(default_factory=list)  # "key: file int8, model float32 (...)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_dtype)

    def lines(self) -> list[str]:
        out = [f"missing     {self.what}: {k}" for k in self.missing]
        out += [f"unexpected  {self.what}: {k}" for k in self.unexpected]
        out += [f"mis-shaped  {self.what}: {k}" for k in self.mismatched]
        out += [f"wrong dtype {self.what}: {k}" for k in self.wrong_dtype]
        return out

    def summary(self) -> str:
        return (f"{self.what}: {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} mis-shaped" + (f", {len(self.wrong_dtype)} wrong-dtype" if self.wrong_dtype
                                                        else "") + " keys")


def natural_key(key: str) -> list:
    """Sort `blocks.2.x` before `blocks.10.x`: numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def compare_keys(module: nn.Module, state: Mapping[str, Tensor], what: str) -> KeyReport:
    """Works on a meta-device module too: only names and shapes are read."""
    params = module.state_dict()
    expected = {k: tuple(v.shape) for k, v in params.items()}
    report = KeyReport(what)
    report.missing = sorted(set(expected) - set(state), key=natural_key)
    report.unexpected = sorted(set(state) - set(expected), key=natural_key)
    for k in sorted(set(expected) & set(state), key=natural_key):
        if tuple(state[k].shape) != expected[k]:
            report.mismatched.append(f"{k}: file {list(state[k].shape)} vs model {list(expected[k])}")
        problem = dtype_problem(state[k].dtype, params[k].dtype)
        if problem:
            report.wrong_dtype.append(f"{k}: {problem}")
    return report


def first_non_finite(state: Mapping[str, Tensor]) -> str | None:
    """'key: N of M values are NaN or Inf' for the first floating tensor holding any (None: all finite).
    Reads every value (a memory-mapped file is read once)."""
    for key in sorted(state, key=natural_key):
        t = state[key]
        if isinstance(t, Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{key}: {bad} of {t.numel()} values are NaN or Inf"
    return None


def load_into(module: nn.Module, state: Mapping[str, Tensor], what: str, path: str) -> None:
    """Strict load; on any difference raise one line naming the first few problems."""
    report = compare_keys(module, state, what)
    if not report.ok:
        first = "; ".join(" ".join(line.split()) for line in report.lines()[:3])
        raise CheckpointError(f"{path!r} does not match the {what} of this model preset ({report.summary()}: "
                              f"{first}); check --model, or run `dysink-export verify-checkpoint` for the full list")
    bad = first_non_finite(state)       # before anything runs or is exported from these weights
    if bad:
        raise CheckpointError(f"{what} checkpoint {path!r} holds non-finite weights ({bad}): every frame would be "
                              "NaN; use an undamaged checkpoint (`dysink-export verify-checkpoint` lists every tensor)")
    module.load_state_dict(state, strict=True)
