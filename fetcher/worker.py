"""The worker loop: poll → claim what fits → dispatch → wait. Knows no HTTP and no Docker.

Stopping: the first SIGTERM/SIGINT stops claiming and lets running jobs finish; the second (or the
drain timeout) cancels running jobs, which then stop their containers and report `error`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from fetcher.errors import ApiError, AuthError, InvalidJobSpec
from fetcher.job.keepalive import Cancel
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs
from fetcher.resources import Allocation, ResourcePool

log = logging.getLogger(__name__)


class JobSource(Protocol):
    """The server, as the loop sees it."""

    def claim(self, offer: ClaimOffer) -> ClaimResult:
        """Claim jobs that fit `offer`."""

    def reject(self, invalid: InvalidJobSpec) -> None:
        """A claimed job whose spec is invalid: report it `error`."""

    def hand_back(self, job_id: str, reason: str) -> None: ...

    def housekeeping(self) -> None:
        """Between polls: deliver kept final statuses, refresh the heartbeat."""


Execute = Callable[[str, JobSpecs, Allocation, Cancel], None]


@dataclass
class LoopOptions:
    poll_interval_s: float = 10.0
    groups: tuple[str, ...] = ()
    exit_when_idle: bool = False
    exit_idle_polls: int = 1  # consecutive empty claims before exit_when_idle exits
    max_jobs: int | None = None
    drain_timeout_s: float | None = None
    max_backoff_s: float = 60.0


class Worker:
    def __init__(
        self,
        source: JobSource,
        pool: ResourcePool,
        execute: Execute,
        options: LoopOptions,
    ) -> None:
        self.source = source
        self.pool = pool
        self.execute = execute
        self.options = options
        self.stop_requested = False
        self.force_requested = False
        self.claimed = 0
        self._wake = threading.Event()
        self._running: dict[str, tuple[threading.Thread, Cancel]] = {}
        self._lock = threading.Lock()
        self._api_problem: str | None = None
        self._backoff_s = options.poll_interval_s
        self._empty_polls = 0

    # --- signals -----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_signal)
        signal.signal(signal.SIGINT, self.handle_signal)

    def handle_signal(self, signum: int, _frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested:
            log.info(
                "worker: %s: no new jobs; waiting for %d running job(s) to finish (again to stop them)",
                name,
                len(self._running),
            )
            self.request_stop()
        else:
            log.warning("worker: %s again: stopping running jobs", name)
            self.request_force_stop()

    def request_stop(self) -> None:
        self.stop_requested = True
        self._wake.set()

    def request_force_stop(self) -> None:
        self.stop_requested = True
        self.force_requested = True
        with self._lock:
            for _thread, cancel in self._running.values():
                cancel.set("worker shut down")
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        log.info(
            "worker: up, %d slot(s), polling every %.0f s",
            self.pool.max_jobs,
            self.options.poll_interval_s,
        )
        while not self.stop_requested:
            self.source.housekeeping()
            if self.options.max_jobs is not None and self.claimed >= self.options.max_jobs:
                log.info("worker: claimed %d job(s), the --max-jobs limit; finishing", self.claimed)
                break
            timeout = self._poll_once()
            if timeout is None:
                continue  # got a job and a slot is still free: ask again at once
            if self._wake.wait(timeout):
                self._wake.clear()
        self._drain()
        self.source.housekeeping()
        log.info("worker: stopped")
        return 0

    def _poll_once(self) -> float | None:
        """Claim once if a slot is free. Returns how long to wait, or None to claim again at once."""
        offer = self.pool.offer(list(self.options.groups))
        if offer is None:
            return self.options.poll_interval_s
        try:
            result = self.source.claim(offer)
        except ApiError as exc:
            return self._api_failed(exc)
        self._api_ok()
        for bad in result.invalid:
            self.claimed += 1
            self.source.reject(bad)
        if not result.jobs and not result.invalid:
            self._empty_polls += 1
            if self.options.exit_when_idle and self._empty_polls >= self.options.exit_idle_polls:
                log.info(
                    "worker: no job available in %d poll(s); exiting when idle", self._empty_polls
                )
                self.request_stop()
            return self.options.poll_interval_s
        self._empty_polls = 0
        for job_id, spec in result.jobs.items():
            self._dispatch(job_id, spec)
        return None

    def _dispatch(self, job_id: str, spec: JobSpecs) -> None:
        self.claimed += 1
        alloc = self.pool.allocate(job_id, spec.hardware)
        if isinstance(alloc, str):
            log.warning("job %s: does not fit what is free (%s); handing it back", job_id, alloc)
            self.source.hand_back(job_id, f"handed back by the worker: {alloc}")
            return
        cancel = Cancel()
        thread = threading.Thread(
            target=self._job_thread, args=(job_id, spec, alloc, cancel), name=f"job-{job_id}"
        )
        with self._lock:
            self._running[job_id] = (thread, cancel)
        thread.start()

    def _job_thread(self, job_id: str, spec: JobSpecs, alloc: Allocation, cancel: Cancel) -> None:
        try:
            self.execute(job_id, spec, alloc, cancel)
        except BaseException:  # execute reports its own failures; this is the last guard
            log.exception("job %s: crashed the job thread", job_id)
        finally:
            self.pool.release(job_id)
            with self._lock:
                self._running.pop(job_id, None)
            self._wake.set()

    def _api_failed(self, exc: ApiError) -> float:
        problem = f"{type(exc).__name__}: {exc}"
        if self._api_problem is None:
            hint = (
                " (check ACCESS_TOKEN or USERNAME/PASSWORD)" if isinstance(exc, AuthError) else ""
            )
            log.error("worker: cannot claim jobs: %s%s; retrying with backoff", problem, hint)
        self._api_problem = problem
        self._backoff_s = min(self._backoff_s * 2, self.options.max_backoff_s)
        return self._backoff_s

    def _api_ok(self) -> None:
        if self._api_problem is not None:
            log.info("worker: API reachable again")
            self._api_problem = None
        self._backoff_s = self.options.poll_interval_s

    def _drain(self) -> None:
        deadline = (
            None
            if self.options.drain_timeout_s is None
            else time.monotonic() + self.options.drain_timeout_s
        )
        while True:
            with self._lock:
                threads = [t for t, _ in self._running.values()]
            if not threads:
                return
            self.source.housekeeping()
            if deadline is not None and time.monotonic() >= deadline and not self.force_requested:
                log.warning(
                    "worker: drain timeout reached; stopping %d running job(s)", len(threads)
                )
                self.request_force_stop()
            self._wake.wait(1.0)
            self._wake.clear()

    @property
    def running_jobs(self) -> list[str]:
        with self._lock:
            return list(self._running)
