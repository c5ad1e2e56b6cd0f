"""The keep-alive: a background thread that PUTs the job's current status every interval.

Every PUT refreshes the job on the server. A status change is sent at once, and every change is
sent, in order, even when the job moves on faster than the thread (a short job still shows
`running` and `postprocessing`). Only a 404 stops the job (it is gone: deleted by its user, or
re-queued and taken elsewhere). Any other failure (the API down, a 401, a malformed login answer,
a bug) is logged once and tried again at the next interval: hours of GPU work are never ended by
the keep-alive's own trouble; if the server hears nothing for its failure timeout, it re-queues
the job, and the next PUT's 404 then stops it here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol

from fetcher.errors import Interrupted, JobGone
from fetcher.models import JobStatus

log = logging.getLogger(__name__)

GONE = "gone"  # the server no longer has the job for us: nothing to report
SHUTDOWN = "shutdown"  # the worker stops: hand the job back


class StatusSink(Protocol):
    def put_status(
        self,
        job_id: str,
        status: JobStatus,
        runtime_details: str | None = None,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None: ...

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus: ...


class Cancel:
    """Why a job must stop: set once, by the keep-alive (gone) or the worker (shutdown)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.kind: str | None = None
        self._lock = threading.Lock()
        self._listeners: list[threading.Event] = []

    def set(self, reason: str, kind: str = SHUTDOWN) -> None:
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
        return self.kind == GONE


class KeepAlive:
    def __init__(
        self,
        api: StatusSink,
        job_id: str,
        interval_s: float,
        cancel: Cancel,
        *,
        verify_first: bool = False,
    ) -> None:
        self.api = api
        # an adopted job: ask the server before the first PUT, which would silently take back a
        # job the server re-queued while the fetcher was away
        self.verify_first = verify_first
        self.job_id = job_id
        self.interval_s = interval_s
        self.cancel = cancel
        self.pings = 0
        self.sent: list[JobStatus] = []  # each status change, once it reached the server
        self._current = JobStatus.preprocessing
        self._changes: deque[JobStatus] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()  # send what is queued, then end
        self._halt = threading.Event()  # end now, interrupting waits
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{job_id}", daemon=True)

    def start(self, status: JobStatus) -> KeepAlive:
        self.set_status(status)
        self._thread.start()
        return self

    def set_status(self, status: JobStatus) -> None:
        """Change the status; the thread sends it at once (the caller does not wait)."""
        with self._lock:
            if status != self._current or not self.sent:
                self._changes.append(status)
            self._current = status
        self._wake.set()

    def stop(self, flush_s: float = 5.0) -> None:
        """Send the status changes still queued (for at most `flush_s`), then stop. Returns once no
        PUT is in flight, so that none can land after the final status."""
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(flush_s)
        self._halt.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _next(self) -> tuple[JobStatus, bool]:
        with self._lock:
            if self._changes:
                return self._changes[0], True
            return self._current, False

    def _still_ours(self) -> bool:
        """Before the first PUT of an adopted job: does the server still have it running for us?
        Sets the cancel (gone) when it does not. Retries at each interval until it can tell."""
        failing: str | None = None
        while not self._halt.is_set() and not self._closing.is_set():
            try:
                status = self.api.get_status(
                    self.job_id, retry_s=min(self.interval_s, 30.0), interrupt=self._halt
                )
            except JobGone:
                self.cancel.set("the job is gone (deleted by its user, or re-queued)", GONE)
                return False
            except Interrupted:
                return False
            except Exception as exc:  # noqa: BLE001 - log once, try again later
                text = f"{type(exc).__name__}: {exc}"
                if text != failing:
                    log.warning("job %s: cannot ask the server about it yet: %s", self.job_id, text)
                    failing = text
                self._wake.wait(self.interval_s)
                self._wake.clear()
                continue
            if status == JobStatus.queued or status.is_final:
                log.warning(
                    "job %s: the server has it as %s (re-queued while the fetcher was away):"
                    " stopping it here",
                    self.job_id,
                    status.value,
                )
                self.cancel.set(f"the server has the job as {status.value}", GONE)
                return False
            return True
        return False

    def _run(self) -> None:
        if self.verify_first and not self._still_ours():
            return
        failing: str | None = None
        ping_due = False  # the interval passed since the last PUT
        while not self._halt.is_set():
            status, change = self._next()
            if not change and not ping_due:
                if self._closing.is_set():
                    return
                woke = self._wake.wait(self.interval_s)  # a change, a stop, or the interval
                self._wake.clear()
                ping_due = not woke
                continue
            try:
                self.api.put_status(
                    self.job_id, status, interrupt=self._halt, retry_s=min(self.interval_s, 30.0)
                )
            except JobGone:
                log.warning(
                    "job %s: the server no longer has this job for us (404): stopping it",
                    self.job_id,
                )
                self.cancel.set("the job is gone (deleted by its user, or re-queued)", GONE)
                return
            except Interrupted:
                return
            except Exception as exc:  # noqa: BLE001 - anything else: log once, try again later
                text = f"{type(exc).__name__}: {exc}"
                if text != failing:
                    log.warning(
                        "job %s: keep-alive failed, will keep trying: %s", self.job_id, text
                    )
                    failing = text
                if self._closing.is_set():
                    return
                self._wake.wait(self.interval_s)
                self._wake.clear()
                ping_due = True
                continue
            if failing is not None:
                log.info("job %s: keep-alive delivered again", self.job_id)
                failing = None
            self.pings += 1
            ping_due = False
            if change:
                with self._lock:
                    if self._changes and self._changes[0] == status:
                        self._changes.popleft()
                self.sent.append(status)
