"""The one deliverer of statuses that must arrive exactly once: final statuses and hand-backs.

Jobs hand their report to the store (`submit`) and go on to clean up; this thread alone sends
reports, so two senders can never deliver the same one. It never blocks the loop or the
heartbeat. Each try is counted in the store before it is made: when an earlier try may have
reached the server (no answer, a 5xx, a crash in between), the next one asks the server first
(`GET /jobs/{id}/status`): the status already there means delivered; 404 means the job is gone;
a different final status there is never overwritten. A report no answer ever takes is retried
with growing pauses for up to MAX_AGE_S.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from fetcher.errors import ApiError, Interrupted, JobGone
from fetcher.job.keepalive import StatusSink
from fetcher.models import JobStatus
from fetcher.store import JobStore, Report, StoreError

log = logging.getLogger(__name__)

MAX_AGE_S = 7 * 24 * 3600
MAX_PAUSE_S = 300.0


class StatusApi(StatusSink, Protocol):
    """The status calls the deliverer makes: the keep-alive's PUT, and the GET that checks."""

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus: ...


Delivered = Callable[[Report, str], None]


class Deliverer:
    def __init__(
        self,
        store: JobStore,
        api: StatusApi,
        *,
        max_pause_s: float = MAX_PAUSE_S,
        max_age_s: float = MAX_AGE_S,
        on_done: Delivered | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.api = api
        self.max_pause_s = max_pause_s
        self.max_age_s = max_age_s
        self.on_done = on_done
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._memory: dict[str, Report] = {}  # reports the store could not keep (disk full)
        self._memory_lock = threading.Lock()
        # per queue id, held from the last look at a report to the end of its PUT, and while a job
        # is claimed anew under that id: a report of an earlier job of the id is then never sent
        self._sending: dict[str, threading.Lock] = {}
        self._sending_lock = threading.Lock()
        self._waiting_logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="deliverer", daemon=True)

    # --- the job threads' side ---------------------------------------------------------------
    def submit(
        self, job_id: str, status: JobStatus, details: str | None, *, verify: bool = False
    ) -> None:
        """Keep the report (on disk; in memory if the disk fails) and wake the deliverer."""
        try:
            self.store.report(job_id, status, details, verify=verify)
        except StoreError as exc:
            log.error(
                "job %s: could not keep the %s status on disk (%s); delivering it from memory",
                job_id,
                status.value,
                exc,
            )
            with self._memory_lock:
                self._memory[job_id] = Report(job_id, status, details, self.clock(), 0, verify)
        self._wake.set()

    @contextlib.contextmanager
    def claiming(self, job_id: str) -> Iterator[None]:
        """Around noting a job claimed anew under `job_id` (which replaces, in the store, a report
        still waiting for an earlier job of that id): no such report is being sent meanwhile, and
        one kept in memory is dropped (the server has moved on from that job)."""
        with self._sending_for(job_id):
            with self._memory_lock:
                stale = self._memory.pop(job_id, None)
            if stale is not None:
                log.warning(
                    "job %s: claimed anew; its earlier %s status (kept in memory) is dropped",
                    job_id,
                    stale.status.value,
                )
            yield

    def _sending_for(self, job_id: str) -> threading.Lock:
        with self._sending_lock:
            return self._sending.setdefault(job_id, threading.Lock())

    def pending(self) -> list[str]:
        with self._memory_lock:
            kept = set(self._memory)
        with contextlib.suppress(StoreError):
            kept |= {r.job_id for r in self.store.reports()}
        return sorted(kept)

    def retry_now(self) -> None:
        """The API answers again: try every waiting report now."""
        with contextlib.suppress(StoreError):
            self.store.retry_all_now()
        with self._memory_lock:
            for job_id, r in self._memory.items():
                self._memory[job_id] = _with(r, next_try_at=0)
        self._wake.set()

    # --- the thread ------------------------------------------------------------------------------
    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self, flush_s: float = 10.0) -> list[str]:
        """Deliver what can be delivered within `flush_s`, then stop. Returns what is still pending
        (kept on disk for the next start)."""
        deadline = time.monotonic() + flush_s
        self.retry_now()
        while time.monotonic() < deadline and self.pending() and self._thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(max(deadline - time.monotonic(), 0) + 5)
        left = self.pending()
        if left:
            log.warning(
                "deliverer: %d status(es) not delivered yet (%s); kept for the next start",
                len(left),
                ", ".join(left[:10]),
            )
        return left

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
                pause = self._pause()
            except Exception:  # never die: log, wait, go on
                log.exception("deliverer: unexpected failure; going on")
                pause = 5.0
            self._wake.wait(pause)
            self._wake.clear()

    def _pause(self) -> float:
        try:
            due = self.store.next_due()
        except StoreError:
            due = self.clock() + 5.0  # look again soon: the store may come back
        with self._memory_lock:
            mem = [r.next_try_at for r in self._memory.values()]
        times = [t for t in [due, *mem] if t is not None]
        if not times:
            return 3600.0
        return min(max(min(times) - self.clock(), 0.05), 3600.0)

    def deliver_due(self) -> None:
        now = self.clock()
        try:
            stored = self.store.reports(due_by=now)
        except StoreError as exc:  # the reports kept in memory are delivered all the same
            log.error("deliverer: cannot read the job store: %s", exc)
            stored = []
        for report in stored:
            if self._stop.is_set():
                return
            try:
                self._deliver(report, in_memory=False)
            except StoreError as exc:
                log.error("job %s: job store failed while delivering: %s", report.job_id, exc)
        with self._memory_lock:
            due = [r for r in self._memory.values() if r.next_try_at <= now]
        for report in due:
            if self._stop.is_set():
                return
            self._deliver(report, in_memory=True)

    # --- one report ----------------------------------------------------------------------------
    def _deliver(self, r: Report, *, in_memory: bool) -> None:
        if self.clock() - r.since > self.max_age_s:
            log.error(
                "job %s: giving up on status %s after %.0f h",
                r.job_id,
                r.status.value,
                (self.clock() - r.since) / 3600,
            )
            self._finish(r, "dropped: too old", in_memory)
            return
        if in_memory:
            with self._memory_lock:
                if (kept := self._memory.get(r.job_id)) is None or kept.since != r.since:
                    return  # dropped meanwhile (the id was claimed anew)
                self._memory[r.job_id] = _with(r, tries=r.tries + 1)
        else:
            self.store.trying(r.job_id, r.since)
        try:
            if r.tries > 0 or r.verify:
                current = self.api.get_status(r.job_id, retry_s=0, interrupt=self._stop)
                if current == r.status:
                    self._finish(r, "delivered (the server already had it)", in_memory)
                    return
                # never overwrite a final status; a re-queued job only takes a real result
                if current.is_final or (
                    current == JobStatus.queued and r.status != JobStatus.finished
                ):
                    log.warning(
                        "job %s: the server has it as %s now; not sending %s",
                        r.job_id,
                        current.value,
                        r.status.value,
                    )
                    self._finish(r, f"dropped: the server has {current.value}", in_memory)
                    return
            with self._sending_for(r.job_id):
                if not self._is_current(r, in_memory):
                    log.info(
                        "job %s: its %s status is no longer wanted (the id was claimed anew)",
                        r.job_id,
                        r.status.value,
                    )
                    return
                self.api.put_status(r.job_id, r.status, r.details, retry_s=0, interrupt=self._stop)
        except JobGone:
            log.warning(
                "job %s: status %s not delivered: the job is no longer ours",
                r.job_id,
                r.status.value,
            )
            self._finish(r, "dropped: gone", in_memory)
        except (ApiError, Interrupted) as exc:
            self._later(r, exc, in_memory)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - an odd answer delays this report, never the others
            self._later(r, exc, in_memory)
        else:
            held = self.clock() - r.since
            log.info(
                "job %s: reported %s%s",
                r.job_id,
                r.status.value,
                f" (held {held:.0f} s)" if held > 5 else "",
            )
            self._finish(r, "delivered", in_memory)

    def _is_current(self, r: Report, in_memory: bool) -> bool:
        """Is `r` still the report kept for its job (not replaced by a job claimed anew)?"""
        if in_memory:
            with self._memory_lock:
                kept = self._memory.get(r.job_id)
            return kept is not None and kept.since == r.since
        try:
            return self.store.is_current(r.job_id, r.since)
        except StoreError:
            return True  # cannot tell; the report was current when it was read

    def _later(self, r: Report, exc: Exception, in_memory: bool) -> None:
        pause = min(self.max_pause_s, 2.0 ** min(r.tries + 1, 20)) * random.uniform(0.5, 1.0)
        if r.job_id not in self._waiting_logged:
            log.warning(
                "job %s: status %s kept until the API takes it: %s", r.job_id, r.status.value, exc
            )
            self._waiting_logged.add(r.job_id)
        when = self.clock() + pause
        if in_memory:
            with self._memory_lock:
                if r.job_id in self._memory:
                    self._memory[r.job_id] = _with(self._memory[r.job_id], next_try_at=when)
        else:
            self.store.retry_at(r.job_id, when, r.since)

    def _finish(self, r: Report, outcome: str, in_memory: bool) -> None:
        self._waiting_logged.discard(r.job_id)
        if in_memory:
            with self._memory_lock:
                if (kept := self._memory.get(r.job_id)) is not None and kept.since == r.since:
                    del self._memory[r.job_id]
        else:
            self.store.done(r.job_id, f"{r.status.value} {outcome}", r.details, r.since)
        if self.on_done is not None:
            self.on_done(r, outcome)


def _with(r: Report, **changes: object) -> Report:
    fields = {**r.__dict__, **changes}
    return Report(**fields)
