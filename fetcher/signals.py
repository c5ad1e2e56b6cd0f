"""SIGTERM and SIGINT, handled in a thread of their own instead of a signal handler (see
`SignalRelay`): the worker loop's `handle_signal` may then take locks like any thread."""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


class SignalRelay:
    """SIGTERM and SIGINT, handled in a thread instead of a signal handler.

    The handler installed is a no-op: the interpreter's C-level handler writes the signal's number
    to a pipe (`signal.set_wakeup_fd`), and this thread reads it and calls `on_signal`. A signal
    that arrives while the main thread holds a lock can therefore never deadlock the daemon."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._closed = threading.Event()
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)

    def install(self) -> SignalRelay:
        """Call from the main thread."""
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, _recorded)
        self._thread.start()
        return self

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._old_fd)
        self._closed.set()
        os.write(self._write, b"\0")

    def _run(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._read], [], [], 1.0)
            if not ready:
                continue
            for signum in os.read(self._read, 64):
                if self._closed.is_set() or signum == 0:
                    continue
                try:
                    self.on_signal(signum)
                except Exception:  # a relay that dies would make the daemon deaf
                    log.exception("worker: handling signal %d failed", signum)


def _recorded(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the wakeup fd already carries the signal)."""
