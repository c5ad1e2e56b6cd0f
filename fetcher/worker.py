"""The worker loop: poll → claim what fits → dispatch → wait. Knows no HTTP and no Docker.

Stopping: the first SIGTERM/SIGINT stops claiming and lets running jobs finish; the second (or the
drain timeout) stops running jobs, which are handed back to the queue. Signals reach
`handle_signal` from a thread of their own (`fetcher.signals`). Every wait of the loop takes the
stop event. One pass of the loop is guarded: an exception is logged and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from fetcher.cancel import Cancel, CancelKind
from fetcher.errors import ApiError, AuthError, Interrupted, InvalidJobSpec
from fetcher.leftovers import (
    LEFTOVER_RETRY_S,
    LEFTOVER_TRIES_BEFORE_IDLE_EXIT,
    Leftover,
    Leftovers,
)
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs
from fetcher.pool import Allocation, NoFit, ResourcePool

log = logging.getLogger(__name__)

STAGED_STOPPED = "the worker is stopping; the job was staged and not started"
CLAIMED_STOPPED = "the worker is stopping; the job was not started"


@dataclass(frozen=True)
class Adoption:
    """A job an earlier life of this fetcher left running (or ended but unreported): run it on
    from its container (`container_id`) with the share it held."""

    job_id: str
    spec: JobSpecs
    cpu_cores: int
    memory_mb: int
    gpus: list[str] = field(default_factory=list)
    container_id: str = ""


@dataclass(frozen=True)
class JobStart:
    """What a job thread runs: a claimed job with its share, or an adopted one (`resume`: the id
    of the container an earlier life started). The pipeline calls `ended` the moment the job's
    container has ended: its share (GPU included) goes to the next job while it uploads; and
    `gave_up` the moment a staged job fails or gives up before its share came (it will not
    start): it leaves the pool then, not after its report and cleanup, so that a share freed
    meanwhile is not given to it."""

    job_id: str
    spec: JobSpecs
    alloc: Allocation
    resume: str | None = None
    ended: Callable[[], None] = lambda: None
    gave_up: Callable[[], None] = lambda: None


class JobSource(Protocol):
    """The server and the fetcher's state, as the loop sees them (`fetcher.source`)."""

    def recover(self, stop: threading.Event) -> list[Adoption]:
        """What an earlier life left behind: clean up, and the jobs to run on."""

    def claim(
        self, offer: ClaimOffer, stop: threading.Event, *, ahead: bool = False
    ) -> ClaimResult:
        """Claim jobs that fit `offer` (`ahead`: for a job to stage behind a running one)."""

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
        """A claimed job is about to run here: note it (durably)."""

    def reject(self, invalid: InvalidJobSpec) -> None:
        """A claimed job whose spec is invalid: report it `error`."""

    def hand_back(self, job_id: str, reason: str) -> None:
        """A claimed job that will not run here: give it back to the queue."""

    def housekeeping(self, running: int) -> None:
        """Every pass: refresh the heartbeat."""

    def stopping(self) -> None:
        """The worker was told to stop (its first signal)."""

    def api_reachable(self) -> None:
        """The API answers again after a failure."""


# Runs one job to its end; returns a Leftover when the job's share must stay reserved meanwhile
# (its container would not go).
Execute = Callable[[JobStart, Cancel], Leftover | None]


@dataclass
class LoopOptions:
    poll_interval_s: float = 10.0
    groups: tuple[str, ...] = ()
    exit_when_idle: bool = False
    exit_idle_polls: int = 1  # consecutive empty claims before exit_when_idle exits
    max_jobs: int | None = None
    drain_timeout_s: float | None = None
    max_backoff_s: float = 60.0
    force_grace_s: float = 40.0  # after a forced stop, how long job threads get to end
    leftover_retry_s: float = LEFTOVER_RETRY_S  # how often a container that would not go is retried


class Worker:
    def __init__(
        self,
        source: JobSource,
        pool: ResourcePool,
        execute: Execute,
        options: LoopOptions,
        *,
        stop_event: threading.Event | None = None,
        force_event: threading.Event | None = None,
    ) -> None:
        self.source = source
        self.pool = pool
        self.execute = execute
        self.options = options
        self.stop_event = stop_event or threading.Event()  # an operator asked to stop
        self.force_event = force_event or threading.Event()  # running jobs are being stopped
        self.signals = 0
        self.claimed = 0
        self.claiming = True  # False once --exit-when-idle or --max-jobs ends claiming
        self.idle_polls = 0
        self._wake = threading.Event()
        self._running: dict[str, tuple[threading.Thread, Cancel]] = {}
        self._finishing: set[str] = set()  # jobs whose container ended, still uploading
        self.leftovers = Leftovers(pool, options.leftover_retry_s)
        self._lock = threading.Lock()
        self._api_problem: str | None = None
        self._backoff_s = options.poll_interval_s

    # --- signals -----------------------------------------------------------------------------
    def handle_signal(self, signum: int, _frame: FrameType | None = None) -> None:
        """First signal: stop claiming and drain. Second: stop the running jobs (handed back)."""
        name = signal.Signals(signum).name
        self.signals += 1
        if self.signals == 1:
            self.source.stopping()
            log.info(
                "worker: %s: no new jobs; waiting for %d running job(s) to finish (again to stop them)",
                name,
                len(self.running_jobs),
            )
            self.request_stop()
        else:
            log.warning("worker: %s again: stopping running jobs and handing them back", name)
            self.request_force_stop()

    def request_stop(self) -> None:
        self.stop_event.set()
        unstarted = set(self.pool.withdraw_unstarted())  # none of them can start after this
        with self._lock:
            staged = [c for job_id, (_t, c) in self._running.items() if job_id in unstarted]
        for cancel in staged:  # not started yet: given back now, not after the running job
            cancel.set(STAGED_STOPPED, CancelKind.unstarted)
        self._wake.set()

    def request_force_stop(self, reason: str = "worker shut down") -> None:
        self.stop_event.set()
        self.force_event.set()
        with self._lock:
            cancels = [cancel for _thread, cancel in self._running.values()]
        for cancel in cancels:
            cancel.set(reason, CancelKind.shutdown)
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            adopted = self.source.recover(self.stop_event)
        except Exception:
            log.exception("worker: crash recovery failed; going on without it")
            adopted = []
        for job in adopted:
            self._adopt(job)
        log.info(
            "worker: up, %d slot(s), polling every %.0f s",
            self.pool.max_jobs,
            self.options.poll_interval_s,
        )
        while not self.stop_event.is_set() and self.claiming:
            try:
                timeout = self._pass()
            except Exception:
                log.exception("worker: this pass of the loop failed; going on")
                timeout = self._backoff_s
            if timeout and self._wake.wait(timeout):
                self._wake.clear()
        self._drain()
        self.leftovers.flush()
        log.info("worker: stopped")
        return 0

    def _housekeeping(self) -> None:
        try:
            self.source.housekeeping(len(self.running_jobs))
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the loop
            log.error("worker: housekeeping failed (%s: %s); going on", type(exc).__name__, exc)
        self.leftovers.retry_due()

    def _idle(self, why: str) -> float:
        """One more pass without work; --exit-when-idle leaves after EXIT_IDLE_POLLS of them."""
        self.idle_polls += 1
        if self.options.exit_when_idle and self.idle_polls >= self.options.exit_idle_polls:
            log.info(
                "worker: %s (%d pass(es) in a row without a job); exiting when idle",
                why,
                self.idle_polls,
            )
            self.claiming = False
            return 0
        return self.options.poll_interval_s

    def _stuck_on_leftovers(self) -> bool:
        """Nothing runs, and every share held is a leftover's that failed to go several times."""
        with self._lock:
            running = bool(self._running)
        return not running and self.leftovers.stuck()

    def _pass(self) -> float:
        """One pass: housekeeping, then one claim if a slot is free. Returns how long to wait."""
        self._housekeeping()
        self.pool.start_waiting()  # a staged job's GPU may be free now (others left it)
        if self.options.max_jobs is not None and self.claimed >= self.options.max_jobs:
            log.info("worker: claimed %d job(s), the --max-jobs limit; finishing", self.claimed)
            self.claiming = False
            return 0
        return self._poll_once()

    def _poll_once(self) -> float:
        with self._lock:
            uploading = len(self._finishing)
        if uploading > self.pool.max_jobs:
            # each slot's last job may upload beside the next one; more waits (an end wakes us).
            # Checked here only, before each claim: the claimed job uploads too when it ends, and
            # a staged job starts whatever uploads are under way (the GPU never waits for them),
            # so a slot has up to two uploads at once, three with STAGE_AHEAD
            return self.options.poll_interval_s
        groups = list(self.options.groups)
        offer, ahead = self.pool.offer(groups), None
        if offer is None and not self.stop_event.is_set():
            offer, ahead = self.pool.offer_ahead(groups) or (None, None)
        if offer is None:
            if self.options.exit_when_idle and self._stuck_on_leftovers():
                log.warning(
                    "worker: no share free but those of containers the engine will not remove"
                    " (tried %d times); exiting when idle (the next start removes them)",
                    LEFTOVER_TRIES_BEFORE_IDLE_EXIT,
                )
                self.claiming = False
                return 0
            return self.options.poll_interval_s
        try:
            result = self.source.claim(offer, self.stop_event, ahead=ahead is not None)
        except Interrupted:
            return 0
        except ApiError as exc:
            return self._api_failed(exc)
        if result.paused is not None:
            # this box cannot take a job now; a pilot with nothing running may as well leave
            if not self.running_jobs:
                return self._idle("claiming paused")
            return self.options.poll_interval_s
        self._api_ok()
        for bad in result.invalid:
            if self._running_here(bad.job_id):
                continue
            self.claimed += 1
            self.source.reject(bad)
        if not result.jobs and not result.invalid:
            if result.refused or ahead is not None:  # all refused; or no job to stage: not idle
                return self.options.poll_interval_s
            return self._idle("no job available")
        self.idle_polls = 0
        for job_id, spec in result.jobs.items():
            self._dispatch(job_id, spec, ahead)
        return 0  # got something: if a slot is still free, ask again at once

    def _running_here(self, job_id: str) -> bool:
        """A claim of a job that runs here (the server re-queued it) is refused, spec valid or not:
        the run in progress goes on and is the one reported."""
        with self._lock:
            running_here = job_id in self._running
        if running_here:
            log.warning(
                "job %s: claimed again while it runs here (the server re-queued it): refused; the"
                " run in progress goes on",
                job_id,
            )
        return running_here

    def _dispatch(self, job_id: str, spec: JobSpecs, ahead: str | None = None) -> None:
        if self._running_here(job_id):
            return
        self.claimed += 1
        if self.stop_event.is_set():
            self._hand_back_unstarted(job_id)
            return
        if ahead is None:
            alloc = self.pool.allocate(job_id, spec.hardware)
        else:
            alloc = self.pool.allocate_behind(job_id, spec.hardware, ahead)
        if isinstance(alloc, NoFit) and self.pool.stopping:  # the stop came since the check above
            self._hand_back_unstarted(job_id)
            return
        if isinstance(alloc, NoFit):
            log.warning("job %s: does not fit what is free (%s); handing it back", job_id, alloc)
            self.source.hand_back(job_id, alloc.reason)
            return
        try:
            self.source.accept(job_id, spec, alloc)
        except Exception as exc:  # noqa: BLE001 - the job runs even if the store fails
            log.error("job %s: could not note the job durably (%s); running it anyway", job_id, exc)
        self._start(JobStart(job_id, spec, alloc))

    def _hand_back_unstarted(self, job_id: str) -> None:
        """A job claimed while the worker stops is not started: the drain promises that."""
        log.info("job %s: claimed while the worker stops; handing it back unstarted", job_id)
        self.source.hand_back(job_id, CLAIMED_STOPPED)

    def _adopt(self, job: Adoption) -> None:
        alloc = self.pool.allocate_exact(job.job_id, job.cpu_cores, job.memory_mb, job.gpus)
        self._start(JobStart(job.job_id, job.spec, alloc, job.container_id))

    def _start(self, job: JobStart) -> None:
        cancel = Cancel()
        job = dataclasses.replace(
            job,
            ended=functools.partial(self._container_ended, job.job_id),
            gave_up=functools.partial(self._gave_up, job.job_id),
        )
        if job.alloc.behind is not None:
            log.info("job %s: staged behind job %s (STAGE_AHEAD)", job.job_id, job.alloc.behind)
        thread = threading.Thread(
            target=self._job_thread, args=(job, cancel), name=f"job-{job.job_id}", daemon=True
        )
        with self._lock:
            self._running[job.job_id] = (thread, cancel)
        if self.force_event.is_set():
            cancel.set("worker shut down", CancelKind.shutdown)
        elif self.stop_event.is_set() and self.pool.withdrawn_by_stop(job.alloc):
            # the stop came while the job was being staged (request_stop did not find it in
            # _running yet): handed back now, unstarted, not after its bound
            log.info("job %s: staged while the worker stops; handing it back unstarted", job.job_id)
            cancel.set(STAGED_STOPPED, CancelKind.unstarted)
        elif self.stop_event.is_set() and job.resume is None and job.alloc.behind is None:
            # the stop came while the claimed job was being noted (after _dispatch looked): the
            # drain starts no job claimed after it began
            log.info(
                "job %s: claimed while the worker stops; handing it back unstarted", job.job_id
            )
            cancel.set(CLAIMED_STOPPED, CancelKind.unstarted)
        thread.start()

    def _job_thread(self, job: JobStart, cancel: Cancel) -> None:
        leftover: Leftover | None = None
        try:
            leftover = self.execute(job, cancel)
        except BaseException:  # execute reports its own failures; this is the last guard
            log.exception("job %s: crashed the job thread", job.job_id)
        finally:
            if leftover is None:
                self._release(job.job_id)
            else:  # the container may still run on its GPU
                self.leftovers.keep(job.job_id, leftover)
            self.pool.withdraw(job.job_id)  # staged, and never got its share
            with self._lock:
                self._running.pop(job.job_id, None)
                self._finishing.discard(job.job_id)
            self._wake.set()

    def _container_ended(self, job_id: str) -> None:
        """The job's container has ended: its share goes to the next job now (a job staged
        behind it starts at once, else the loop claims at once) while it uploads."""
        with self._lock:
            self._finishing.add(job_id)
        self._release(job_id)
        self._wake.set()

    def _gave_up(self, job_id: str) -> None:
        """A staged job will not start (its bound passed, its GPU was quarantined, it was
        cancelled): it leaves its place now; its report and cleanup go on in its thread."""
        self.pool.withdraw(job_id)
        self._wake.set()

    def _release(self, job_id: str) -> None:
        for successor in self.pool.release(job_id):
            log.info("job %s: its share is free; job %s, staged for it, starts", job_id, successor)

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
            try:
                self.source.api_reachable()
            except Exception as exc:  # noqa: BLE001 - only a nudge
                log.error("worker: %s", exc)
        self._backoff_s = self.options.poll_interval_s

    def _drain(self) -> None:
        """Wait for the running jobs. After a stop request, DRAIN_TIMEOUT_S ends the wait by
        stopping them; after a forced stop, job threads get `force_grace_s` to end, then the
        process exits anyway (their durable state is recovered at the next start)."""
        drain_deadline: float | None = None
        force_deadline: float | None = None
        while True:
            running = self.running_jobs
            if not running:
                return
            self._housekeeping()
            now = time.monotonic()
            if self.stop_event.is_set() and self.options.drain_timeout_s is not None:
                drain_deadline = drain_deadline or now + self.options.drain_timeout_s
                if now >= drain_deadline and not self.force_event.is_set():
                    log.warning(
                        "worker: drain timeout reached; stopping %d running job(s)", len(running)
                    )
                    self.request_force_stop()
            if self.force_event.is_set():
                force_deadline = force_deadline or now + self.options.force_grace_s
                if now >= force_deadline:
                    log.error(
                        "worker: job(s) %s did not end in time; exiting anyway (they are picked up"
                        " at the next start)",
                        ", ".join(running),
                    )
                    return
            if self._wake.wait(1.0):
                self._wake.clear()

    @property
    def running_jobs(self) -> list[str]:
        with self._lock:
            return list(self._running)
