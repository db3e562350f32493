"""One stage's outcome: a status, a one-line detail, its numbers and table rows, saved as JSON as
the stage goes (a stage stopped at its budget keeps what it had measured)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import write_atomic

PASSED, FAILED, SKIPPED, ERROR, TIMEOUT, NOT_RUN = "PASSED", "FAILED", "SKIPPED", "ERROR", "TIMEOUT", "NOT RUN"
STATUSES = (PASSED, FAILED, SKIPPED, ERROR, TIMEOUT, NOT_RUN)
# A stage that did not end in one of these proved nothing: the kit's verdict is not PASSED.
BAD = (FAILED, ERROR, TIMEOUT, NOT_RUN)


def result_path(out: str | os.PathLike, stage: str) -> Path:
    return Path(out) / f"stage-{stage}.json"


def _clean(value):
    """JSON-safe: NaN / Inf become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class StageResult:
    stage: str
    title: str = ""
    status: str = NOT_RUN
    detail: str = ""
    seconds: float | None = None
    numbers: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)      # [{"column": value, ...}] for the report's tables
    notes: list = field(default_factory=list)     # lines for the report
    out: str | None = field(default=None, repr=False)

    def finish(self, status: str, detail: str = "") -> "StageResult":
        assert status in STATUSES, status
        self.status, self.detail = status, detail or self.detail
        return self.save()

    def save(self) -> "StageResult":
        if self.out:
            data = json.dumps(self.to_json(), indent=1, allow_nan=False)
            write_atomic(str(result_path(self.out, self.stage)), data.encode())
        return self

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("out")
        return _clean(data)

    @classmethod
    def load(cls, out: str | os.PathLike, stage: str) -> "StageResult | None":
        path = result_path(out, stage)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        known = {k: data[k] for k in ("stage", "title", "status", "detail", "seconds", "numbers", "rows", "notes")
                 if k in data}
        return cls(**known)
