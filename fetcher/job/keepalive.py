"""The keep-alive: a background thread that PUTs the job's current status every interval.

Every PUT refreshes the job on the server; a status change is sent at once. A 404 means the job is
gone (deleted by its user, or re-queued and taken elsewhere): the thread cancels the job. Transient
failures are logged once per state change and tried again next interval. Anything else is handed
to the pipeline through the cancel handle, never swallowed.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from fetcher.errors import ApiUnavailable, Interrupted, JobGone
from fetcher.models import JobStatus

log = logging.getLogger(__name__)


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


class Cancel:
    """Why a job must stop: set once, by the keep-alive (gone / failed) or the worker (shutdown)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.gone = False
        self._lock = threading.Lock()

    def set(self, reason: str, *, gone: bool = False) -> None:
        with self._lock:
            if self.event.is_set():
                return
            self.reason, self.gone = reason, gone
            self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class KeepAlive:
    def __init__(self, api: StatusSink, job_id: str, interval_s: float, cancel: Cancel) -> None:
        self.api = api
        self.job_id = job_id
        self.interval_s = interval_s
        self.cancel = cancel
        self.status = JobStatus.preprocessing
        self.pings = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{job_id}", daemon=True)

    def start(self, status: JobStatus) -> KeepAlive:
        self.status = status
        self._thread.start()
        return self

    def set_status(self, status: JobStatus) -> None:
        """Change the status; the thread sends it at once (the caller does not wait)."""
        self.status = status
        self._wake.set()

    def stop(self) -> None:
        """Stop pinging; returns once no PUT is in flight, so none can land after the final status."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        unavailable = False
        try:
            while not self._stop.is_set():
                status = self.status
                try:
                    self.api.put_status(
                        self.job_id, status, interrupt=self._stop, retry_s=self.interval_s
                    )
                    self.pings += 1
                    if unavailable:
                        log.info("job %s: keep-alive delivered again", self.job_id)
                        unavailable = False
                except JobGone:
                    log.warning(
                        "job %s: the server no longer has this job for us (404): stopping it",
                        self.job_id,
                    )
                    self.cancel.set("the job is gone (deleted by its user or re-queued)", gone=True)
                    return
                except Interrupted:
                    return
                except ApiUnavailable as exc:
                    if not unavailable:
                        log.warning(
                            "job %s: keep-alive failed, will keep trying: %s", self.job_id, exc
                        )
                        unavailable = True
                self._wake.wait(self.interval_s)
                self._wake.clear()
        except BaseException as exc:  # hand anything unexpected to the pipeline, never die silently
            log.exception("job %s: keep-alive failed", self.job_id)
            self.cancel.set(f"keep-alive failed: {exc}")
