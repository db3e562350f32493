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


STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopHold:
    """From `begin()` to `end()`, Ctrl-C / SIGTERM / SIGHUP are recorded in `signals` instead of raised:
    a cleanup that has begun (closing the video, writing stats.json) finishes whatever arrives during
    it. `end()` puts the previous handlers back; the recorded signals are not raised again (the run
    they would stop is already stopping or done). Main thread only: elsewhere `begin()` does nothing."""

    def __init__(self):
        self.signals: list[int] = []
        self._old: dict | None = None

    def _record(self, signum, frame) -> None:
        self.signals.append(signum)

    def begin(self) -> "StopHold":
        if self._old is None:
            old = {}
            try:
                for sig in STOPS:
                    old[sig] = signal.signal(sig, self._record)
            except ValueError:      # not the main thread
                for sig, handler in old.items():
                    signal.signal(sig, handler)
                old = {}
            self._old = old
        return self

    def end(self) -> None:
        for sig, handler in (self._old or {}).items():
            signal.signal(sig, handler)
        self._old = None

    def __enter__(self) -> "StopHold":
        return self.begin()

    def __exit__(self, *exc) -> None:
        self.end()


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, StopSignal) else signal.SIGINT)
