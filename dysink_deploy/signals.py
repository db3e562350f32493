"""Stop signals: SIGTERM / SIGHUP act like Ctrl-C, and a few steps hold them until they are done.

Core (no click): the runtime's stream loop and every CLI share these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


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


def _raises(handler) -> bool:
    """Whether a handler stops the program with KeyboardInterrupt (Python's Ctrl-C, or StopSignal)."""
    return handler is signal.default_int_handler or handler is _raise_stop


class StopHold:
    """From `begin()` to `end()`, Ctrl-C / SIGTERM / SIGHUP are recorded in `signals` instead of raised:
    a cleanup that has begun (closing the video, writing stats.json) finishes whatever arrives during
    it. `arm()` before the work that the first signal stops: that signal still raises (a StopSignal),
    and its handler begins the hold before it does, so no second one can cut the cleanup, not even in
    the instants before the code that catches the first has run.

    `end()` puts the previous handlers back. A recorded signal whose previous handler raises is not
    raised again (the run it would stop is already stopping or done); one whose previous action was
    the default (end the process: SIGTERM in a program that never set a handler) is sent again, so a
    cleanup delays that end but never cancels it. `ignore_until_exit()` instead of `end()` in a process
    about to exit: nothing after it is cut, interpreter shutdown included. Main thread only: elsewhere
    these do nothing."""

    def __init__(self):
        self.signals: list[int] = []
        self._old: dict | None = None
        self.holding = False

    def _record(self, signum, frame) -> None:
        self.signals.append(signum)

    def _first(self, signum, frame) -> None:
        self.begin()
        raise StopSignal(signum)

    def _install(self, handlers: dict) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if self._old is None:
            self._old = {sig: signal.getsignal(sig) for sig in STOPS}
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def arm(self) -> "StopHold":
        """Until `end()`: the first Ctrl-C / SIGTERM / SIGHUP that would raise here raises StopSignal
        and begins the hold (signals whose handler does not raise are left as they are)."""
        if not self.holding:
            current = {sig: signal.getsignal(sig) for sig in STOPS}
            self._install({sig: self._first for sig, h in current.items() if _raises(h) or h == self._first})
        return self

    def begin(self) -> "StopHold":
        if not self.holding:
            self._install({sig: self._record for sig in STOPS})
            self.holding = threading.current_thread() is threading.main_thread()
        return self

    def end(self) -> None:
        old, self._old, self.holding = self._old, None, False
        for sig, handler in (old or {}).items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        resend = [sig for sig in dict.fromkeys(self.signals) if old and old.get(sig) == signal.SIG_DFL]
        self.signals = []
        for sig in resend:
            os.kill(os.getpid(), sig)

    def ignore_until_exit(self) -> None:
        """The process is about to exit: Ctrl-C / SIGTERM / SIGHUP are ignored from now on (Python
        keeps ignored signals ignored while it shuts down; it would reset handlers to the default)."""
        if threading.current_thread() is threading.main_thread():
            for sig in STOPS:
                signal.signal(sig, signal.SIG_IGN)
        self._old, self.holding = None, False

    def __enter__(self) -> "StopHold":
        return self.begin()

    def __exit__(self, *exc) -> None:
        self.end()


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, StopSignal) else signal.SIGINT)
