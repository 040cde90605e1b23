"""Stopping a run politely: Ctrl-C, SIGTERM (and Ctrl-Break on Windows) or the app's Cancel
button become a flag the training loop checks once per step, so last.pt is saved before exiting.
"""

import contextlib
import signal
import threading
from collections.abc import Callable


def stop_signals() -> list[int]:
    """Ctrl-C, a polite kill, and on Windows Ctrl-Break (Windows sends no other signal)."""
    return [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s]


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks once per step, so a checkpoint is saved
    before exiting instead of dying mid-step. The previous handlers come back on exit; outside the
    main thread (the demo app trains in one) it installs nothing."""

    def __init__(self, cancelled: Callable[[], bool] | None = None):
        self.signal_name: str | None = None
        self.cancelled = cancelled or (lambda: False)  # a request from elsewhere (the app's button)
        self._previous = {}
        self._protected = 0

    @property
    def reason(self) -> str | None:
        """Why training should stop now: the signal's name, "cancelled", or None."""
        return self.signal_name or ("cancelled" if self.cancelled() else None)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and not self._protected:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal_name = self.signal_name or signal.Signals(signum).name

    @contextlib.contextmanager
    def protected(self):
        """Within this block (a save, the final steps) a second signal is not an abort: the
        block finishes, so no file is left half-written and no traceback escapes."""
        self._protected += 1
        try:
            yield
        finally:
            self._protected -= 1

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
