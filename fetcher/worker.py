"""The worker loop: poll → claim what fits → dispatch → wait. Knows no HTTP and no Docker.

Stopping: the first SIGTERM/SIGINT stops claiming and lets running jobs finish; the second (or the
drain timeout) stops running jobs, which are handed back to the queue. Signals are not handled in
a signal handler: the handler only records the signal's number in a pipe (`SignalRelay`), and a
thread of its own calls `handle_signal`, which may take locks like any thread. Every wait of the
loop takes the stop event. One pass of the loop is guarded: an exception is logged and the loop
goes on.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from fetcher.errors import ApiError, AuthError, Interrupted, InvalidJobSpec
from fetcher.job.keepalive import SHUTDOWN, Cancel
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs
from fetcher.resources import Allocation, ResourcePool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adoption:
    """A job an earlier life of this fetcher left running (or ended but unreported): run it on from
    `resume` (opaque to the loop) with the share it held."""

    job_id: str
    spec: JobSpecs
    cpu_cores: int
    memory_mb: int
    gpus: list[str] = field(default_factory=list)
    resume: object = None


class JobSource(Protocol):
    """The server and the fetcher's state, as the loop sees them."""

    def recover(self, stop: threading.Event) -> list[Adoption]:
        """What an earlier life left behind: clean up, and the jobs to run on."""

    def claim(self, offer: ClaimOffer, stop: threading.Event) -> ClaimResult:
        """Claim jobs that fit `offer`."""

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
        """A claimed job is about to run here: note it (durably)."""

    def reject(self, invalid: InvalidJobSpec) -> None:
        """A claimed job whose spec is invalid: report it `error`."""

    def hand_back(self, job_id: str, reason: str) -> None:
        """A claimed job that will not run here: give it back to the queue."""

    def housekeeping(self, running: int) -> None:
        """Every pass: refresh the heartbeat."""

    def api_reachable(self) -> None:
        """The API answers again after a failure."""


# Tries again to remove what a job left on the engine (a container the engine would not remove,
# which may still hold its GPU); True once it is gone.
Leftover = Callable[[], bool]
# Runs one job to its end; returns a Leftover when the job's share must stay reserved meanwhile.
Execute = Callable[[str, JobSpecs, Allocation, Cancel, object], Leftover | None]
LEFTOVER_RETRY_S = 30.0
LEFTOVER_TRIES_BEFORE_IDLE_EXIT = 3  # --exit-when-idle leaves a container that outlived these


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
        # a pool key holding an ended job's share -> (how to retry its removal, when next, tries)
        self._leftovers: dict[str, tuple[Leftover, float, int]] = {}
        self._leftover_seq = 0
        self._lock = threading.Lock()
        self._api_problem: str | None = None
        self._backoff_s = options.poll_interval_s

    # --- signals -----------------------------------------------------------------------------
    def handle_signal(self, signum: int, _frame: FrameType | None = None) -> None:
        """First signal: stop claiming and drain. Second: stop the running jobs (handed back)."""
        name = signal.Signals(signum).name
        self.signals += 1
        if self.signals == 1:
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
        self._wake.set()

    def request_force_stop(self, reason: str = "worker shut down") -> None:
        self.stop_event.set()
        self.force_event.set()
        with self._lock:
            cancels = [cancel for _thread, cancel in self._running.values()]
        for cancel in cancels:
            cancel.set(reason, SHUTDOWN)
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
        log.info("worker: stopped")
        return 0

    def _housekeeping(self) -> None:
        try:
            self.source.housekeeping(len(self.running_jobs))
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the loop
            log.error("worker: housekeeping failed (%s: %s); going on", type(exc).__name__, exc)
        self._retry_leftovers()

    def _retry_leftovers(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(k, r, n) for k, (r, at, n) in self._leftovers.items() if at <= now]
        for key, retry, tries in due:
            try:
                gone = retry()
            except Exception as exc:  # noqa: BLE001 - tried again later
                log.error("%s: removing its container failed: %s", key, exc)
                gone = False
            with self._lock:
                if gone:
                    self._leftovers.pop(key, None)
                else:
                    self._leftovers[key] = (retry, now + LEFTOVER_RETRY_S, tries + 1)
            if gone:
                self.pool.release(key)
                log.info("%s: its container is removed at last; its share is free again", key)

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
            return (
                not self._running
                and bool(self._leftovers)
                and all(
                    n >= LEFTOVER_TRIES_BEFORE_IDLE_EXIT for _, _, n in self._leftovers.values()
                )
            )

    def _pass(self) -> float:
        """One pass: housekeeping, then one claim if a slot is free. Returns how long to wait."""
        self._housekeeping()
        if self.options.max_jobs is not None and self.claimed >= self.options.max_jobs:
            log.info("worker: claimed %d job(s), the --max-jobs limit; finishing", self.claimed)
            self.claiming = False
            return 0
        return self._poll_once()

    def _poll_once(self) -> float:
        offer = self.pool.offer(list(self.options.groups))
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
            result = self.source.claim(offer, self.stop_event)
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
            if result.refused:
                return self.options.poll_interval_s  # the server has something, all refused
            return self._idle("no job available")
        self.idle_polls = 0
        for job_id, spec in result.jobs.items():
            self._dispatch(job_id, spec)
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

    def _dispatch(self, job_id: str, spec: JobSpecs) -> None:
        if self._running_here(job_id):
            return
        self.claimed += 1
        if self.stop_event.is_set():
            log.info("job %s: claimed while the worker stops; handing it back unstarted", job_id)
            self.source.hand_back(job_id, "the worker is stopping; the job was not started")
            return
        alloc = self.pool.allocate(job_id, spec.hardware)
        if isinstance(alloc, str):
            log.warning("job %s: does not fit what is free (%s); handing it back", job_id, alloc)
            self.source.hand_back(job_id, alloc)
            return
        try:
            self.source.accept(job_id, spec, alloc)
        except Exception as exc:  # noqa: BLE001 - the job runs even if the store fails
            log.error("job %s: could not note the job durably (%s); running it anyway", job_id, exc)
        self._start(job_id, spec, alloc, None)

    def _adopt(self, job: Adoption) -> None:
        alloc = self.pool.allocate_exact(job.job_id, job.cpu_cores, job.memory_mb, job.gpus)
        self._start(job.job_id, job.spec, alloc, job.resume)

    def _start(self, job_id: str, spec: JobSpecs, alloc: Allocation, resume: object) -> None:
        cancel = Cancel()
        thread = threading.Thread(
            target=self._job_thread,
            args=(job_id, spec, alloc, cancel, resume),
            name=f"job-{job_id}",
            daemon=True,
        )
        with self._lock:
            self._running[job_id] = (thread, cancel)
        if self.force_event.is_set():
            cancel.set("worker shut down", SHUTDOWN)
        thread.start()

    def _job_thread(
        self, job_id: str, spec: JobSpecs, alloc: Allocation, cancel: Cancel, resume: object
    ) -> None:
        leftover: Leftover | None = None
        try:
            leftover = self.execute(job_id, spec, alloc, cancel, resume)
        except BaseException:  # execute reports its own failures; this is the last guard
            log.exception("job %s: crashed the job thread", job_id)
        finally:
            if leftover is None:
                self.pool.release(job_id)
            else:
                # the container may still run on its GPU: keep its share out of any offer (under
                # a key of its own, so that the same queue id can be claimed anew) until it is gone
                with self._lock:  # job threads end concurrently: one number each
                    self._leftover_seq += 1
                    key = f"job {job_id} (ended, #{self._leftover_seq})"  # an id may be reused
                self.pool.rename(job_id, key)
                with self._lock:  # retried only once its share is held under `key`
                    self._leftovers[key] = (leftover, time.monotonic() + LEFTOVER_RETRY_S, 0)
                log.error(
                    "job %s: its container is still on the engine; its CPU, memory and GPU(s) stay"
                    " reserved until it is removed (tried again every %.0f s)",
                    job_id,
                    LEFTOVER_RETRY_S,
                )
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
