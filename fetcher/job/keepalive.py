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

from fetcher.cancel import Cancel, CancelKind
from fetcher.errors import Interrupted, JobGone
from fetcher.models import JobStatus
from fetcher.ownership import still_ours

log = logging.getLogger(__name__)

GONE_REASON = "the job is gone (deleted by its user, or re-queued)"


class StatusSink(Protocol):
    """The status calls of the worker-facing API (`fetcher.api.client.WorkerApi`)."""

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

    def _failed(self, exc: Exception, failing: str | None) -> str:
        """Log a failure once (until another one, or a success, comes); returns its text."""
        text = f"{type(exc).__name__}: {exc}"
        if text != failing:
            log.warning("job %s: keep-alive failed, will keep trying: %s", self.job_id, text)
        return text

    def _gone(self, why: str) -> None:
        self.cancel.set(why, CancelKind.gone)

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
                self._gone(GONE_REASON)
                return False
            except Interrupted:
                return False
            except Exception as exc:  # noqa: BLE001 - log once, try again later
                failing = self._failed(exc, failing)
                self._wake.wait(self.interval_s)
                self._wake.clear()
                continue
            if not still_ours(status):
                log.warning(
                    "job %s: the server has it as %s (re-queued while the fetcher was away):"
                    " stopping it here",
                    self.job_id,
                    status.value,
                )
                self._gone(f"the server has the job as {status.value}")
            return still_ours(status)
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
                ping_due = not self._wake.wait(self.interval_s)  # a change, a stop, the interval
                self._wake.clear()
                continue
            try:
                self._put(status, change)
            except JobGone:
                log.warning(
                    "job %s: the server no longer has this job for us (404): stopping it",
                    self.job_id,
                )
                self._gone(GONE_REASON)
                return
            except Interrupted:
                return
            except Exception as exc:  # noqa: BLE001 - anything else: log once, try again later
                failing = self._failed(exc, failing)
                if self._closing.is_set():
                    return
                self._wake.wait(self.interval_s)
                self._wake.clear()
                ping_due = True
                continue
            if failing is not None:
                log.info("job %s: keep-alive delivered again", self.job_id)
                failing = None
            ping_due = False

    def _put(self, status: JobStatus, change: bool) -> None:
        """One PUT of `status`; a change is taken off the queue once it reached the server."""
        self.api.put_status(
            self.job_id, status, interrupt=self._halt, retry_s=min(self.interval_s, 30.0)
        )
        self.pings += 1
        if change:
            with self._lock:
                if self._changes and self._changes[0] == status:
                    self._changes.popleft()
            self.sent.append(status)
