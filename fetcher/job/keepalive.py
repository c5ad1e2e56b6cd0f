"""The keep-alive: a background thread that PUTs the job's current status every interval.

Every PUT refreshes the job on the server. A status change is sent at once, and every change is
sent, in order, even when the job moves on faster than the thread (a short job still shows
`running` and `postprocessing`). A 404 stops the job (it is gone: deleted by its user, or
re-queued and taken elsewhere). Any other failure (the API down, a 401, a malformed login answer,
a bug) is logged once and tried again at the next interval: hours of GPU work are never ended by
the keep-alive's own trouble.

But a PUT after a failed one, or after a long silence, must not be sent blindly: the server may
have re-queued the job meanwhile (a later PUT then silently takes it back), failed it at its
retry limit (a PUT would overwrite its final `error`), or forgotten the id (a PUT answers 500 for
ever, never the 404 that stops the job). So the keep-alive first asks (`GET /jobs/{id}/status`,
`fetcher.ownership.still_ours`), as it does before the first PUT of an adopted job, and stops a
job that is no longer ours as gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from fetcher.cancel import Cancel, CancelKind
from fetcher.errors import Interrupted, JobGone
from fetcher.models import JobStatus
from fetcher.ownership import runs_on, still_ours

log = logging.getLogger(__name__)

GONE_REASON = "the job is gone (deleted by its user, or re-queued)"
# The real server re-queues (or, at its retry limit, fails) a job it has not heard of for its
# failure timeout (TIMEOUT_FAILURE, 300 s by default, checked every 60 s; see the protocol notes).
SERVER_FAILURE_TIMEOUT_S = 300.0
# No PUT reached the server for this long (a stalled thread, a suspended box, an interval set
# too long): the server may be about to time the job out, or have done so already. Half the
# failure timeout leaves room for a PUT that takes its own retry budget to land.
VERIFY_AFTER_SILENCE_S = SERVER_FAILURE_TIMEOUT_S / 2


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        # an adopted job: ask the server before the first PUT, which would silently take back a
        # job the server re-queued while the fetcher was away
        self.verify_first = verify_first
        self._clock = clock
        self._last_ok = clock()  # the last PUT that reached the server (the claim, at first)
        self._last_failed = False  # the last PUT failed
        self._silence_limit_s = max(VERIFY_AFTER_SILENCE_S, 1.5 * interval_s)
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

    def _still_ours(self, rule: Callable[[JobStatus | None], bool] = still_ours) -> bool:
        """Before a PUT whose job's fate is uncertain (an adopted job's first: `still_ours`; the
        first after a failed PUT or a long silence: `runs_on`): does the server still have it
        for us? Sets the cancel (gone) when it does not. Retries at each interval until it can
        tell."""
        failing: str | None = None
        while not self._halt.is_set() and not self._closing.is_set():
            try:
                status = self.api.get_status(
                    self.job_id, retry_s=min(self.interval_s, 30.0), interrupt=self._halt
                )
            except JobGone:
                log.warning(
                    "job %s: the server no longer knows this job (404): stopping it", self.job_id
                )
                self._gone(GONE_REASON)
                return False
            except Interrupted:
                return False
            except Exception as exc:  # noqa: BLE001 - log once, try again later
                failing = self._failed(exc, failing)
                self._wake.wait(self.interval_s)
                self._wake.clear()
                continue
            if not rule(status):
                log.warning(
                    "job %s: the server has it as %s (re-queued or ended while it did not hear"
                    " from this worker): stopping it here",
                    self.job_id,
                    status.value,
                )
                self._gone(f"the server has the job as {status.value}")
                return False
            if status == JobStatus.queued:
                log.warning(
                    "job %s: the server re-queued it while it did not hear from this worker, and"
                    " no other worker took it: taking it back",
                    self.job_id,
                )
            return True
        return False

    def uncertain(self) -> bool:
        """Whether the server may have re-queued, failed or forgotten the job unknown to this
        worker: its last PUT failed, or none got through for too long. The job's final report is
        then sent only after asking the server (`Deliverer.submit(verify=True)`)."""
        with self._lock:
            failed = self._last_failed
        return failed or self._silence_s() > self._silence_limit_s

    def _run(self) -> None:
        # ask the server before the next PUT: an adopted job's first (was it re-queued while the
        # fetcher was away?); after a failed PUT or a long silence (is it gone, or ended?)
        verify: Callable[[JobStatus | None], bool] | None = (
            still_ours if self.verify_first else None
        )
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
            if verify is None and self._silent_too_long():
                verify = runs_on
            if verify is not None:
                if not self._still_ours(verify):
                    return
                verify = None
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
                with self._lock:
                    self._last_failed = True
                # the server may have re-queued, failed or forgotten the job meanwhile
                verify = verify or runs_on
                if self._closing.is_set():
                    return
                self._wake.wait(self.interval_s)
                self._wake.clear()
                ping_due = True
                continue
            with self._lock:
                self._last_ok, self._last_failed = self._clock(), False
            if failing is not None:
                log.info("job %s: keep-alive delivered again", self.job_id)
                failing = None
            ping_due = False

    def _silent_too_long(self) -> bool:
        """No PUT reached the server for VERIFY_AFTER_SILENCE_S (or one and a half intervals, for
        an interval set longer than that): it may have timed the job out."""
        silence = self._silence_s()
        if silence <= self._silence_limit_s:
            return False
        log.warning(
            "job %s: no keep-alive reached the server for %.0f s: asking it before the next",
            self.job_id,
            silence,
        )
        return True

    def _silence_s(self) -> float:
        """How long since the last PUT that reached the server (the claim, before the first)."""
        with self._lock:
            return self._clock() - self._last_ok

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
