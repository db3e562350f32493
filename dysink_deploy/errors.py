"""One exception type for user errors.

A `DysinkError` carries a single line that says what is wrong and what to do.
The CLIs print it as ``error: <message>`` and exit non-zero, without a
traceback; anything else escaping is a bug and keeps its traceback.
"""


class DysinkError(Exception):
    """A user-facing error: bad input, missing file, mismatched artifact."""

    def __init__(self, message: str):
        # Keep it to one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class ConfigError(DysinkError, ValueError):
    """Inconsistent or out-of-range configuration values."""
