"""The torch dtype of each precision name (`graphs.PRECISIONS`): the one table of them."""

from __future__ import annotations

import torch

from ..errors import DysinkError
from ..graphs import PRECISIONS

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of `precision`; a DysinkError naming the valid ones for anything else."""
    try:
        return TORCH_DTYPES[precision]
    except KeyError:
        raise DysinkError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}") from None
