"""Why a running job must stop: set once, by the keep-alive (the server no longer has the job for
us) or by the worker loop (this worker stops: the job is handed back). Every wait of a job's steps
ends when its Cancel is set."""

from __future__ import annotations

import threading
from enum import StrEnum


class CancelKind(StrEnum):
    gone = "gone"  # the server no longer has the job for us: nothing to report
    shutdown = "shutdown"  # the worker stops: hand the job back
    unstarted = "unstarted"  # the worker stops and the job, staged ahead, never started


class Cancel:
    """Set once, with a reason and a kind; later calls are ignored."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.kind: CancelKind | None = None
        self._lock = threading.Lock()
        self._listeners: list[threading.Event] = []

    def set(self, reason: str, kind: CancelKind = CancelKind.shutdown) -> None:
        with self._lock:
            if self.event.is_set():
                return
            self.reason, self.kind = reason, kind
            listeners = list(self._listeners)
        self.event.set()
        for event in listeners:
            event.set()

    def subscribe(self, event: threading.Event) -> None:
        """Also set `event` when the job is cancelled (at once if it already is): a wait for
        something else can then end on either."""
        with self._lock:
            self._listeners.append(event)
            already = self.event.is_set()
        if already:
            event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    @property
    def gone(self) -> bool:
        return self.kind == CancelKind.gone

    @property
    def shutdown(self) -> bool:
        """The worker stops (the job is handed back)."""
        return self.kind in (CancelKind.shutdown, CancelKind.unstarted)

    @property
    def unstarted(self) -> bool:
        """The worker stops, and the job was staged and never started: nobody's fault."""
        return self.kind == CancelKind.unstarted
