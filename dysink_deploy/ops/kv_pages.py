"""K/V page storage (`kv_cache_dtype`): the one quantiser and dequantiser of 8-bit pages.

    auto   pages in the model precision (today's pools, untouched)
    bf16   pages stored bfloat16 whatever the model precision
    int8   int8 pages + one float32 scale per (token, head): x ~= q * scale, q in [-127, 127]
    fp8    float8_e4m3fn pages + the same scales: x ~= q * scale, |q| <= 448 (e4m3's largest finite)

Granularity, per (token, head) over the head dim D: a page holds one block's post-RoPE K/V, whose
rows differ in magnitude from token to token and head to head (DiT keys carry per-token outliers,
and RoPE only rotates within a head). One scale per tensor or per head would size every row by the
largest one and crush the small rows to a few levels; one per row of D elements bounds every
element's error by half a step of its own row's maximum (int8: amax / 254), at 4 bytes per D
elements (3% of an int8 page at D = 128). Finer (sub-row groups) buys little: a row's elements
share one RoPE frequency set and one norm.

The new block's K/V are quantised once, when its page is written (`quantise_page`, in every
backend's write_page); GatedSinkAttention dequantises the gathered pages (`dequantise_pages`,
to the model dtype, before any other use) in the reference, the ONNX function body and the
kernels. The gate's mean keys and the current block's K/V are never quantised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..graphs import KV_CACHE_DTYPES, QUANTISED_KV_DTYPES as QUANTISED
QMAX = {"int8": 127.0, "fp8": 448.0}
STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16}
ONNX_STORAGE = {"int8": "int8", "fp8": "float8e4m3fn", "bf16": "bfloat16"}   # TensorSpec dtype names


def is_quantised(kv_cache_dtype: str) -> bool:
    return kv_cache_dtype in QUANTISED


def page_storage(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype a pool is stored in."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
    return model_dtype if kv_cache_dtype == "auto" else STORAGE[kv_cache_dtype]


def quantise_page(x: Tensor, kv_cache_dtype: str) -> tuple[Tensor, Tensor]:
    """x [..., D] (any float dtype) -> (q [..., D] int8 | float8_e4m3fn, scale float32 [...]).

    scale = max|x| over D / QMAX (1 for an all-zero row, whose q is 0); int8 rounds half to even
    and saturates at +-127, fp8 rounds to nearest (the cast) after clamping to +-448."""
    qmax = QMAX[kv_cache_dtype]
    xf = x.float()
    amax = xf.abs().amax(-1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    y = (xf / scale[..., None]).clamp(-qmax, qmax)
    q = y.round().to(torch.int8) if kv_cache_dtype == "int8" else y.to(torch.float8_e4m3fn)
    return q, scale


def dequantise_pages(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """q [..., D] int8 | float8_e4m3fn, scale float32 [...] -> q * scale in `dtype` (product in float32)."""
    return (q.float() * scale.float()[..., None]).to(dtype)


def storage_of_pool(pool_dtype: torch.dtype) -> str:
    """'int8' | 'fp8' for a quantised pool's dtype (what the kernels and the plugin branch on)."""
    for name, dt in STORAGE.items():
        if dt == pool_dtype and name in QUANTISED:
            return name
    raise ValueError(f"not an 8-bit page dtype: {pool_dtype}")
