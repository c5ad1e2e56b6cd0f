"""The one deliverer of statuses that must arrive exactly once: final statuses and hand-backs.

Jobs hand their report over (`submit`) and go on to clean up; this thread alone sends reports, so
two senders can never deliver the same one. It never blocks the loop or the heartbeat. A report is
kept in the job store (`StoredReports`), or in memory when the disk cannot keep it
(`MemoryReports`): the deliverer treats both outboxes alike. Each try is counted before it is made:
when an earlier try may have reached the server (no answer, a 5xx, a crash in between), the next
one asks the server first (`GET /jobs/{id}/status`) and `fetcher.ownership.report_fate` decides:
the status already there means delivered; 404 means the job is gone; a final status there is never
overwritten. A report no answer ever takes is retried with growing pauses for up to MAX_AGE_S.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from fetcher.errors import JobGone
from fetcher.job.keepalive import StatusSink
from fetcher.models import JobStatus
from fetcher.ownership import ReportFate, report_fate
from fetcher.store import JobStore, Report, StoreError

log = logging.getLogger(__name__)

MAX_AGE_S = 7 * 24 * 3600
MAX_PAUSE_S = 300.0

Delivered = Callable[[Report, str], None]


class Outbox(Protocol):
    """Where reports wait. A report is named by its job id and `since`: the id alone may already
    name a newer job (claimed anew), whose report a stale one must never change."""

    def due(self, now: float) -> list[Report]: ...
    def next_due(self) -> float | None: ...
    def pending(self) -> set[str]: ...
    def count_try(self, r: Report) -> bool:
        """Count a try before it is made; False when the report is no longer kept."""
        ...

    def is_current(self, r: Report) -> bool: ...
    def retry_at(self, r: Report, when: float) -> None: ...
    def finish(self, r: Report, outcome: str) -> None: ...
    def retry_all_now(self) -> None: ...


class StoredReports:
    """Reports kept in the job store (they survive a restart)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def due(self, now: float) -> list[Report]:
        try:
            return self.store.reports(due_by=now)
        except StoreError as exc:  # the reports kept in memory are delivered all the same
            log.error("deliverer: cannot read the job store: %s", exc)
            return []

    def next_due(self) -> float | None:
        return self.store.next_due()

    def pending(self) -> set[str]:
        with contextlib.suppress(StoreError):
            return {r.job_id for r in self.store.reports()}
        return set()

    def count_try(self, r: Report) -> bool:
        self.store.trying(r.job_id, r.since)
        return True

    def is_current(self, r: Report) -> bool:
        try:
            return self.store.is_current(r.job_id, r.since)
        except StoreError:
            return True  # cannot tell; the report was current when it was read

    def retry_at(self, r: Report, when: float) -> None:
        self.store.retry_at(r.job_id, when, r.since)

    def finish(self, r: Report, outcome: str) -> None:
        self.store.done(r.job_id, f"{r.status.value} {outcome}", r.details, r.since)

    def retry_all_now(self) -> None:
        with contextlib.suppress(StoreError):
            self.store.retry_all_now()


class MemoryReports:
    """Reports the store could not keep (a full disk): delivered from memory, lost at exit."""

    def __init__(self) -> None:
        self._kept: dict[str, Report] = {}
        self._lock = threading.Lock()

    def add(self, r: Report) -> None:
        with self._lock:
            self._kept[r.job_id] = r

    def drop(self, job_id: str) -> Report | None:
        with self._lock:
            return self._kept.pop(job_id, None)

    def _current(self, r: Report) -> bool:
        kept = self._kept.get(r.job_id)
        return kept is not None and kept.since == r.since

    def due(self, now: float) -> list[Report]:
        with self._lock:
            return [r for r in self._kept.values() if r.next_try_at <= now]

    def next_due(self) -> float | None:
        with self._lock:
            return min((r.next_try_at for r in self._kept.values()), default=None)

    def pending(self) -> set[str]:
        with self._lock:
            return set(self._kept)

    def count_try(self, r: Report) -> bool:
        with self._lock:
            if not self._current(r):
                return False  # dropped meanwhile (the id was claimed anew)
            self._kept[r.job_id] = dataclasses.replace(r, tries=r.tries + 1)
            return True

    def is_current(self, r: Report) -> bool:
        with self._lock:
            return self._current(r)

    def retry_at(self, r: Report, when: float) -> None:
        with self._lock:
            if r.job_id in self._kept:
                self._kept[r.job_id] = dataclasses.replace(self._kept[r.job_id], next_try_at=when)

    def finish(self, r: Report, outcome: str) -> None:
        with self._lock:
            if self._current(r):
                del self._kept[r.job_id]

    def retry_all_now(self) -> None:
        with self._lock:
            for job_id, r in self._kept.items():
                self._kept[job_id] = dataclasses.replace(r, next_try_at=0)


class Deliverer:
    def __init__(
        self,
        store: JobStore,
        api: StatusSink,
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
        self.stored = StoredReports(store)
        self.memory = MemoryReports()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # per queue id, held from the last look at a report to the end of its PUT, and while a job
        # is claimed anew under that id: a report of an earlier job of the id is then never sent
        self._sending: dict[str, threading.Lock] = {}
        self._sending_lock = threading.Lock()
        self._waiting_logged: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="deliverer", daemon=True)

    @property
    def outboxes(self) -> tuple[Outbox, Outbox]:
        return self.stored, self.memory

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
            self.memory.add(Report(job_id, status, details, self.clock(), 0, verify))
        self._wake.set()

    @contextlib.contextmanager
    def claiming(self, job_id: str) -> Iterator[None]:
        """Around noting a job claimed anew under `job_id` (which replaces, in the store, a report
        still waiting for an earlier job of that id): no such report is being sent meanwhile, and
        one kept in memory is dropped (the server has moved on from that job)."""
        with self._sending_for(job_id):
            stale = self.memory.drop(job_id)
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
        return sorted(self.stored.pending() | self.memory.pending())

    def retry_now(self) -> None:
        """The API answers again: try every waiting report now."""
        for box in self.outboxes:
            box.retry_all_now()
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
        times = []
        for box in self.outboxes:
            try:
                due = box.next_due()
            except StoreError:
                due = self.clock() + 5.0  # look again soon: the store may come back
            if due is not None:
                times.append(due)
        if not times:
            return 3600.0
        return min(max(min(times) - self.clock(), 0.05), 3600.0)

    def deliver_due(self) -> None:
        now = self.clock()
        for box in self.outboxes:
            for report in box.due(now):
                if self._stop.is_set():
                    return
                try:
                    self._deliver(report, box)
                except StoreError as exc:
                    log.error("job %s: job store failed while delivering: %s", report.job_id, exc)

    # --- one report ----------------------------------------------------------------------------
    def _deliver(self, r: Report, box: Outbox) -> None:
        if self.clock() - r.since > self.max_age_s:
            log.error(
                "job %s: giving up on status %s after %.0f h",
                r.job_id,
                r.status.value,
                (self.clock() - r.since) / 3600,
            )
            self._finish(r, box, "dropped: too old")
            return
        if not box.count_try(r):
            return
        try:
            if (r.tries > 0 or r.verify) and not self._still_wanted(r, box):
                return
            with self._sending_for(r.job_id):
                if not box.is_current(r):
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
            self._finish(r, box, "dropped: gone")
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the API down, an odd answer: this report waits
            self._later(r, box, exc)
        else:
            held = self.clock() - r.since
            log.info(
                "job %s: reported %s%s",
                r.job_id,
                r.status.value,
                f" (held {held:.0f} s)" if held > 5 else "",
            )
            self._finish(r, box, "delivered")

    def _still_wanted(self, r: Report, box: Outbox) -> bool:
        """An earlier try may have landed: ask the server. Finishes the report when it is there
        already or no longer wanted. Raises what the GET raises."""
        current = self.api.get_status(r.job_id, retry_s=0, interrupt=self._stop)
        fate = report_fate(current, r.status)
        if fate == ReportFate.already_there:
            self._finish(r, box, "delivered (the server already had it)")
        elif fate == ReportFate.unwanted:
            log.warning(
                "job %s: the server has it as %s now; not sending %s",
                r.job_id,
                current.value,
                r.status.value,
            )
            self._finish(r, box, f"dropped: the server has {current.value}")
        return fate == ReportFate.send

    def _later(self, r: Report, box: Outbox, exc: Exception) -> None:
        pause = min(self.max_pause_s, 2.0 ** min(r.tries + 1, 20)) * random.uniform(0.5, 1.0)
        if r.job_id not in self._waiting_logged:
            log.warning(
                "job %s: status %s kept until the API takes it: %s", r.job_id, r.status.value, exc
            )
            self._waiting_logged.add(r.job_id)
        box.retry_at(r, self.clock() + pause)

    def _finish(self, r: Report, box: Outbox, outcome: str) -> None:
        self._waiting_logged.discard(r.job_id)
        box.finish(r, outcome)
        if self.on_done is not None:
            self.on_done(r, outcome)
