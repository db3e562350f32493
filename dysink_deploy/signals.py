"""Stop signals: SIGTERM / SIGHUP act like Ctrl-C, and a few steps hold them until they are done.

Core (no click): the runtime's stream loop and every CLI share these.
"""

from __future__ import annotations

import contextlib
import signal


class StopSignal(KeyboardInterrupt):
    """SIGTERM / SIGHUP, raised where the program is, so that they stop it the way Ctrl-C does:
    `finally` blocks run (partial exports removed, the video closed, stats written)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum, frame):
    raise StopSignal(signum)


def install_stop_signals() -> None:
    """Make SIGTERM and SIGHUP behave like SIGINT (main thread only; a no-op elsewhere)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _raise_stop)
        except ValueError:      # not the main thread
            pass


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C / SIGTERM / SIGHUP until the block is left (then they act as usual): for steps
    that must not be cut in half, like writing a block's frames and its stats entry."""
    stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    except (AttributeError, ValueError, OSError):     # not the main thread / no pthreads
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, StopSignal) else signal.SIGINT)
