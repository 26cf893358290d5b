"""Ctrl-C and SIGTERM during training: a request to stop after the current step, and loader workers that ignore them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopRequest:
    """SIGINT/SIGTERM, once armed, ask the loop to stop after the current step; a second SIGINT stops at once.

    SIGTERM never aborts: torchrun follows a Ctrl-C with SIGTERM to every rank, and a scheduler's SIGTERM
    comes with a grace period, which the clean stop fits in.
    """

    def __init__(self) -> None:
        self.count = 0
        self.interrupts = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt

    def arm(self) -> None:
        """Catch the signals from now on (before, Ctrl-C interrupts set-up at once)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Restore the previous handlers on exit, if :meth:`arm` was called."""
        try:
            yield
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: loader processes ignore SIGINT and SIGTERM."""
    # Ctrl-C reaches the whole process group; the main process stops cleanly and then ends the workers,
    # which would otherwise die first and turn a clean stop into "worker exited unexpectedly".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
