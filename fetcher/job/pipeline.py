"""process_job: one claimed job, start to end, as a list of steps.

`run_steps` runs the steps and returns how the job ended; an exception is classified instead
(`classify`: the job's fault is `error`, the worker's is a hand-back, a vanished job is `gone`);
then the outcome is reported (handed to the deliverer, which sends it exactly once) and only then
is everything cleaned up. A job adopted after a restart (`Resume`) starts at its container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.api.client import WorkerApi
from fetcher.delivery import Deliverer
from fetcher.errors import (
    ApiError,
    Interrupted,
    InvalidJobSpec,
    JobError,
    JobGone,
    WorkerTrouble,
)
from fetcher.image_ledger import ImageLedger
from fetcher.job.container import ContainerOptions, JobContainer, Limits, RunResult
from fetcher.job.keepalive import GONE, SHUTDOWN, Cancel, KeepAlive
from fetcher.job.transfer import download_inputs, upload_outputs
from fetcher.job.workspace import Layout, Workspace, plan_layout
from fetcher.metrics import Metrics, failure_reason
from fetcher.models import JobSpecs, JobStatus
from fetcher.settings import Settings
from fetcher.store import JobStore, StoreError

log = logging.getLogger(__name__)

FINISHED = "finished"
ERROR = "error"
HANDED_BACK = "handed_back"
GONE_OUTCOME = "gone"
STATUS_OF = {FINISHED: JobStatus.finished, ERROR: JobStatus.error, HANDED_BACK: JobStatus.queued}


@dataclass(frozen=True)
class Outcome:
    kind: str  # finished | error | handed_back | gone
    details: str
    reason: str = ""  # for an error: its class (metrics.FAILURE_REASONS)
    container_left: str | None = None  # a container the engine would not remove (it may hold a GPU)

    @property
    def status(self) -> JobStatus | None:
        """The status to send: `queued` for a hand-back; None for a job that is gone."""
        return STATUS_OF.get(self.kind)


@dataclass
class JobDeps:
    """What a job needs from the outside world; built once by the daemon."""

    settings: Settings
    api: WorkerApi
    docker: Any
    store: JobStore
    deliverer: Deliverer
    fetcher_id: str
    metrics: Metrics = field(default_factory=Metrics)
    images: ImageLedger | None = None  # the job images used, for pruning
    container_options: ContainerOptions = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.container_options = ContainerOptions(
            pull_policy=s.image_pull_policy,
            shm_size=s.shm_size,
            ipc_host=s.ipc_host,
            enforce_limits=s.enforce_job_limits,
            stop_grace_s=s.stop_grace_s,
            log_tail_bytes=s.log_tail_bytes,
            pids_limit=s.job_pids_limit,
            engine_log_max_mb=s.job_engine_log_max_mb,
            cap_drop=tuple(s.job_cap_drop_list),
            network=s.job_network or None,
            log_max_bytes=int(s.job_log_max_mb * 1024 * 1024),
        )


@dataclass(frozen=True)
class Resume:
    """A job whose container an earlier life of this fetcher started."""

    container_id: str


class JobRun:
    """One job's moving parts: its directory, container, keep-alive and what it has produced."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpecs,
        deps: JobDeps,
        cancel: Cancel,
        gpu_uuids: list[str],
        limits: Limits,
        *,
        adopted: bool = False,
    ) -> None:
        s = deps.settings
        self.job_id = job_id
        self.spec = spec
        self.deps = deps
        self.cancel = cancel
        self.gpu_uuids = gpu_uuids
        self.limits = limits
        self.ws = Workspace(job_id, s.path_base, s.host_base)
        self.container = JobContainer(deps.docker, job_id, deps.fetcher_id, deps.container_options)
        self.keepalive = KeepAlive(
            deps.api, job_id, s.keepalive_interval_s, cancel, verify_first=adopted
        )
        self.adopted = adopted
        self.log_file = container_log_path(s, job_id)
        self.layout: Layout | None = None
        self.result: RunResult | None = None
        self.metric_stage: str | None = None  # download, pull, run, upload: the one under way

    def stage(self, name: str) -> None:
        try:
            self.deps.store.stage(self.job_id, name)
        except StoreError as exc:
            log.warning("job %s: could not note stage %s: %s", self.job_id, name, exc)

    def started(self, container_id: str) -> None:
        """Written before the container starts: recovery finds the job's container by it."""
        try:
            self.deps.store.started(self.job_id, container_id)
        except StoreError as exc:
            log.warning("job %s: could not note its container: %s", self.job_id, exc)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """A stage timed in the metrics (fetcher_stage_seconds) and named for failure reasons."""
        self.metric_stage = stage
        with self.deps.metrics.stage(stage):
            yield
        self.metric_stage = None

    def counted(self, direction: str) -> Callable[[int], None]:
        return lambda nbytes: self.deps.metrics.transferred(direction, nbytes)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted(self.cancel.reason or "cancelled")


def process_job(
    job_id: str,
    spec: JobSpecs,
    deps: JobDeps,
    *,
    cancel: Cancel | None = None,
    gpu_uuids: list[str] | None = None,
    limits: Limits | None = None,
    resume: Resume | None = None,
) -> Outcome:
    """Run one claimed job to its end and report it. Never raises: every failure is an Outcome."""
    run = JobRun(
        job_id,
        spec,
        deps,
        cancel or Cancel(),
        gpu_uuids or [],
        limits or Limits(),
        adopted=resume is not None,
    )
    log.info("job %s: %s (%s)", job_id, "adopted" if resume else "started", spec.handler.image_url)
    run.keepalive.start(JobStatus.running if resume else JobStatus.preprocessing)
    try:
        try:
            outcome = run_steps(run, resume)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            outcome = classify(exc, run)
    finally:
        run.keepalive.stop()  # whatever happened: no ping may outlive the job, none land after it
    # an adopted job's status on the server is asked before its report is sent (it may have been
    # re-queued while the fetcher was away, and the keep-alive may never have reached the server)
    report(deps, job_id, outcome, verify=run.adopted)
    if not cleanup(run, outcome):
        return dataclasses.replace(outcome, container_left=run.container.left_behind)
    return outcome


def run_steps(run: JobRun, resume: Resume | None) -> Outcome:
    s = run.deps.settings
    run.layout = plan_layout(run.job_id, run.spec)
    if resume is None:
        run.stage("preparing")
        run.ws.create(run.layout)
        run.stage("downloading")
        with run.timed("download"):
            download_inputs(
                run.deps.api,
                run.job_id,
                run.layout,
                run.ws,
                cancel=run.cancel.event,
                workers=s.download_workers,
                counted=run.counted("down"),
            )
        run.check_cancel()
        run.stage("pulling")
        with run.timed("pull"):
            run.container.pull(run.spec.handler.image_url, run.cancel)
        if run.deps.images is not None:
            run.deps.images.used(run.spec.handler.image_url)
        run.stage("starting")
        run.container.start(
            run.spec,
            run.ws,
            run.gpu_uuids,
            run.limits,
            cancel=run.cancel,
            created=run.started,
        )
    else:
        run.container.attach(resume.container_id)
    run.stage("running")
    run.keepalive.set_status(JobStatus.running)
    run.container.follow_logs(run.log_file)
    with run.timed("run"):
        run.result = run.container.wait(run.cancel, s.job_time_limit_s)
    run.check_cancel()
    run.stage("uploading")
    run.keepalive.set_status(JobStatus.postprocessing)
    with run.timed("upload"):
        upload_outputs(
            run.deps.api,
            run.job_id,
            run.layout,
            run.ws,
            container_log=run.log_file,
            cancel=run.cancel.event,
            workers=s.download_workers,
            counted=run.counted("up"),
            max_files=s.job_output_max_files,
            max_bytes=int(s.job_output_max_mb * 2**20) or None,
        )
    return outcome_of(run.result)


def outcome_of(result: RunResult) -> Outcome:
    if result.exit_code == 0 and not result.ended_by:
        return Outcome(FINISHED, "exit_code: 0")
    reason = "oom" if result.oom_killed else "time_limit" if result.ended_by else "exit_code"
    return Outcome(ERROR, result.describe(), reason)


def classify(exc: Exception, run: JobRun) -> Outcome:
    """What an exception means for the job: its own fault (`error`), the worker's (hand-back),
    or the job is gone. Unexpected exceptions are logged with their traceback, once."""
    cancel = run.cancel
    if cancel.kind == GONE or isinstance(exc, JobGone):
        return Outcome(GONE_OUTCOME, cancel.reason or str(exc))
    reason = failure_reason(exc, run.metric_stage)
    if isinstance(exc, InvalidJobSpec):
        log.error("%s", exc)
        return failed(f"invalid job spec: {exc.field}: {exc.problem}", run.result, reason)
    if cancel.kind == SHUTDOWN and isinstance(exc, Interrupted | ApiError | JobError):
        return worker_trouble(run, cancel.reason or "the worker stopped")
    if isinstance(exc, JobError):
        log.error("job %s: %s", run.job_id, exc)
        return failed(str(exc).removeprefix(f"job {run.job_id}: "), run.result, reason)
    if isinstance(exc, WorkerTrouble | ApiError | OSError | StoreError | Interrupted):
        return worker_trouble(run, str(exc).removeprefix(f"job {run.job_id}: "))
    log.exception("job %s: unexpected failure", run.job_id)
    return worker_trouble(run, f"fetcher internal error: {type(exc).__name__}: {exc}")


def worker_trouble(run: JobRun, reason: str) -> Outcome:
    log.error("job %s: %s", run.job_id, reason)
    return worker_failure(run.deps.settings, reason, run.result)


def worker_failure(settings: Settings, reason: str, result: RunResult | None = None) -> Outcome:
    """The worker, not the job, failed: hand the job back (or `error`, by ON_WORKER_FAILURE)."""
    if settings.on_worker_failure == "error":
        return failed(f"worker failure: {reason}", result, "worker")
    return Outcome(HANDED_BACK, f"handed back by the worker: {reason}", "worker")


def container_log_path(settings: Settings, job_id: str) -> Path:
    """Where a job's output is kept while it runs: the fetcher's own state directory."""
    return settings.state_dir / "logs" / f"{job_id}.log"


def failed(reason: str, result: RunResult | None, kind: str = "other") -> Outcome:
    """An error after the container ended still starts with how it ended (then the reason)."""
    if result is None:
        return Outcome(ERROR, reason, kind)
    tail = f"\n{result.log_tail}" if result.log_tail else ""
    return Outcome(ERROR, f"{result.first_line()}\n{reason}{tail}", kind)


def report(deps: JobDeps, job_id: str, outcome: Outcome, *, verify: bool = False) -> None:
    """Hand the outcome to the deliverer (kept on disk until it is delivered, exactly once)."""
    first_line = outcome.details.splitlines()[0] if outcome.details else ""
    deps.metrics.job_ended(outcome.kind, outcome.reason)
    status = outcome.status
    if status is None:
        log.info("job %s: dropped: %s", job_id, first_line)
        try:
            deps.store.forget(job_id)
        except StoreError as exc:
            log.warning("job %s: could not forget it in the store: %s", job_id, exc)
        return
    log.info("job %s: %s (%s)", job_id, outcome.kind.replace("_", " "), first_line)
    deps.deliverer.submit(job_id, status, outcome.details, verify=verify)


def cleanup(run: JobRun, outcome: Outcome) -> bool:
    """Remove the container, the job directory and the log copy. Never raises. False when the
    container is still on the engine."""
    removed = run.container.remove()
    with contextlib.suppress(OSError):
        run.log_file.unlink(missing_ok=True)
    s = run.deps.settings
    if s.keep_failed_job_dirs and outcome.kind == ERROR:
        log.info("job %s: keeping job directory %s (KEEP_FAILED_JOB_DIRS)", run.job_id, run.ws.path)
        return removed
    if not run.ws.remove():
        # files the job wrote as root, and a fetcher that is not root: delete them as root, in a container
        run.container.purge(run.ws, run.spec.handler.image_url)
        if not run.ws.remove():
            log.error("job %s: job directory %s is left behind", run.job_id, run.ws.path)
    return removed
