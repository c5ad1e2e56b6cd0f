"""ApiJobSource: the worker-facing API and the fetcher's durable state, as the worker loop needs
them (`fetcher.worker.JobSource`): crash recovery, claims (paused while PATH_BASE is nearly full),
noting a claimed job, reporting invalid or unfitting jobs, and the housekeeping of every pass
(heartbeat, metrics gauges, the status snapshot)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from fetcher import __version__, control
from fetcher.errors import ApiError, InvalidJobSpec, Reason
from fetcher.job.deps import JobDeps
from fetcher.lifecycle import OutcomeKind
from fetcher.logs import RecentErrors
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs, JobStatus
from fetcher.pool import Allocation, ResourcePool
from fetcher.quarantine import BOX
from fetcher.recovery import recover
from fetcher.snapshot import META_KEY, DaemonSnapshot, Free, Slots
from fetcher.worker import Adoption

log = logging.getLogger(__name__)

CLAIM_RETRY_S = 5.0  # the loop has its own backoff between claims


class ApiJobSource:
    def __init__(self, deps: JobDeps, pool: ResourcePool, errors: RecentErrors) -> None:
        self.deps = deps
        self.pool = pool
        self.errors = errors
        self.api_problem: str | None = None
        self.last_claim: float | None = None
        self.paused: str | None = None  # why no claim is made now (shown by `fetcher status`)
        self._free_mb: int | None = None
        self._paused_kind: str | None = None

    def recover(self, stop: threading.Event) -> list[Adoption]:
        return recover(self.deps, stop)

    def claim(
        self, offer: ClaimOffer, stop: threading.Event, *, ahead: bool = False
    ) -> ClaimResult:
        self.paused = self._why_not_claim()
        if self.paused is not None:
            return ClaimResult(paused=self.paused)
        if ahead and not self._room_to_stage():
            return ClaimResult()  # no job staged now; the running ones go on
        try:
            result = self.deps.api.claim_jobs(offer, retry_s=CLAIM_RETRY_S, interrupt=stop)
        except ApiError as exc:
            self.api_problem = str(exc)
            raise
        self.api_problem = None
        self.last_claim = time.time()
        self.deps.metrics.claim_succeeded()
        return result

    def _why_not_claim(self) -> str | None:
        """Why this box takes no job now (logged when it starts and when it ends), or None."""
        pause = control.paused(self.deps.settings.state_dir)
        kind, why = "admin", None if pause is None else pause.describe()
        if why is None:
            kind, why = "unhealthy", self._unhealthy()
        if why is None:
            kind, why = "disk", self._disk_too_low()
        self.deps.metrics.set_claims_paused(None if why is None else kind)
        if why != self.paused:
            if why is None:
                log.info("worker: claiming again%s", self._disk_note())
            elif kind == "admin":  # deliberate: not an error
                log.warning("worker: claiming no job: %s", why)
            else:
                log.error("worker: claiming no job: %s", why)
        self._paused_kind = None if why is None else kind
        return why

    def _disk_note(self) -> str:
        if self._paused_kind == "disk" and self._free_mb is not None:
            return f" ({self._free_mb} MB free under PATH_BASE)"
        return ""

    def _unhealthy(self) -> str | None:
        """The box is quarantined, or every GPU it has is."""
        box = self.deps.quarantine.why(BOX)
        if box is not None:
            return f"this box is quarantined: {box}"
        return None if self.deps.gpus is None else self.deps.gpus.none_healthy()

    def _room_to_stage(self) -> bool:
        """A job is staged only while PATH_BASE has room for its inputs beside the running jobs'
        outputs. How disk is counted: each staged job is reckoned to need STAGE_AHEAD_DISK_MB
        until it starts, and the free space must cover MIN_FREE_DISK_MB plus that much for every
        staged job not started yet and for the one about to be claimed (N staged jobs need N+1
        times the room, not one room promised to all). A staged job's bytes already written are
        counted twice until it starts: the safe side, and simpler than following each
        download."""
        s = self.deps.settings
        try:
            free_mb = shutil.disk_usage(s.path_base).free // 2**20
        except OSError:
            return False
        return free_mb >= s.min_free_disk_mb + s.stage_ahead_disk_mb * (self.pool.staged + 1)

    def _disk_too_low(self) -> str | None:
        """Why not to claim now: PATH_BASE has less free space than MIN_FREE_DISK_MB (a job
        claimed then would fail on the disk and be handed back), or cannot be read. Logged when
        the reason comes and when it goes."""
        s = self.deps.settings
        self._free_mb = None
        if not s.min_free_disk_mb:
            return None
        try:
            self._free_mb = free_mb = shutil.disk_usage(s.path_base).free // 2**20
        except OSError as exc:
            return f"PATH_BASE cannot be read: {exc}"
        if free_mb < s.min_free_disk_mb:
            return f"{free_mb} MB free under PATH_BASE (MIN_FREE_DISK_MB={s.min_free_disk_mb})"
        return None

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
        self.deps.metrics.job_claimed()
        with self.deps.deliverer.claiming(job_id):  # a report of an earlier job of this id stops
            replaced = self.deps.store.claimed(
                job_id,
                spec.model_dump(mode="json"),
                name=spec.meta.job_name if isinstance(spec.meta.job_name, str) else None,
                cpu_cores=alloc.cpu_cores,
                memory_mb=alloc.memory_mb,
                gpus=[g.uuid for g in alloc.gpus],
            )
        if replaced is not None:
            log.warning(
                "job %s: claimed anew; the %s status still waiting for its earlier run is dropped"
                " (the server has moved on from it)",
                job_id,
                replaced.status.value,
            )

    def reject(self, invalid: InvalidJobSpec) -> None:
        log.error("%s", invalid)
        self.deps.metrics.job_claimed()
        self.deps.metrics.job_ended(OutcomeKind.error, Reason.invalid_spec)
        self.deps.deliverer.submit(invalid.job_id, JobStatus.error, invalid.detail(invalid.job_id))

    def hand_back(self, job_id: str, reason: str) -> None:
        self.deps.metrics.job_claimed()
        self.deps.metrics.job_ended(OutcomeKind.handed_back, Reason.worker)
        self.deps.deliverer.submit(job_id, JobStatus.queued, f"handed back by the worker: {reason}")

    def housekeeping(self, running: int) -> None:
        self.deps.settings.state_dir.heartbeat.touch()
        engine = self.deps.engine
        if engine is not None and engine.lost_at is not None and engine.alive():
            engine.back()
        self._take_release_request()
        if self.deps.gpus is not None:
            self.deps.gpus.refresh(set(self.pool.held_gpus()))
        snap = self.snapshot()
        m = self.deps.metrics
        m.heartbeat()
        m.set_slots(snap.slots.busy, snap.slots.total)
        m.set_gpus(len(snap.gpus) - len(snap.free.gpus), len(snap.gpus))
        m.set_gpu_states(snap.gpu_states)
        m.set_outbox(len(snap.reports_pending))
        self.deps.store.set_meta(META_KEY, snap.to_json())

    def _take_release_request(self) -> None:
        """`fetcher gpu release`: lift the quarantines it names."""
        keys = control.take_release(self.deps.settings.state_dir)
        if keys is None:
            return
        lifted = self.deps.quarantine.lift(None if "*" in keys else keys)
        log.info(
            "worker: release asked for %s: %s",
            "all" if "*" in keys else ", ".join(keys),
            f"lifted {', '.join(lifted)}" if lifted else "nothing was quarantined",
        )

    def snapshot(self) -> DaemonSnapshot:
        pool = self.pool.snapshot()
        gpus = self.deps.gpus
        return DaemonSnapshot(
            pid=os.getpid(),
            fetcher_id=self.deps.fetcher_id,
            version=__version__,
            updated=time.time(),
            slots=Slots(pool.busy, pool.slots),
            free=Free(pool.free_cpu_cores, pool.free_memory_mb, pool.free_gpus),
            gpus=pool.gpus,
            reports_pending=self.deps.deliverer.pending(),
            api_problem=self.api_problem,
            claims_paused=self.paused,
            last_claim=self.last_claim,
            errors=self.errors.lines(),
            gpu_states=[] if gpus is None else gpus.views(self.pool.held_gpus()),
            quarantined=self.deps.quarantine.items(),
            staged=pool.staged,
        )

    def stopping(self) -> None:
        """A stop signal: where the fetcher runs in a container, an engine restart stops it
        together with the jobs, its API already gone; noting that lets the next start hand
        back the jobs the restart stopped (`fetcher.recovery`)."""
        engine = self.deps.engine
        if engine is not None and not engine.alive(timeout_s=2.0):
            engine.lost("it does not answer as the fetcher is told to stop")

    def api_reachable(self) -> None:
        self.deps.deliverer.retry_now()
