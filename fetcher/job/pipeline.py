"""process_job: one claimed job, start to end, as a list of steps.

workspace → download → container → upload → final status, with the keep-alive around it all and
cleanup on every path. Each stage is a function of its own module, usable without this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fetcher.api.client import WorkerApi
from fetcher.errors import ApiError, FetcherError, Interrupted, JobError, JobGone
from fetcher.job.container import ContainerOptions, JobContainer, Limits, RunResult
from fetcher.job.keepalive import Cancel, KeepAlive
from fetcher.job.transfer import download_inputs, upload_outputs
from fetcher.job.workspace import Workspace
from fetcher.models import JobSpecs, JobStatus, UploadType
from fetcher.outbox import Journal, Outbox
from fetcher.settings import Settings

log = logging.getLogger(__name__)

CONTAINER_LOG = "container.log"


@dataclass
class Outcome:
    status: JobStatus | None  # None: the job is gone, nothing to report
    details: str


@dataclass
class JobDeps:
    """What a job needs from the outside world; built once by the daemon."""

    settings: Settings
    api: WorkerApi
    docker: Any
    outbox: Outbox
    journal: Journal
    fetcher_id: str
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
        )


def process_job(
    job_id: str,
    spec: JobSpecs,
    deps: JobDeps,
    *,
    cancel: Cancel | None = None,
    gpu_uuids: list[str] | None = None,
    limits: Limits | None = None,
) -> Outcome:
    """Run one claimed job to its end and report it. Never raises: every failure is an Outcome."""
    s = deps.settings
    cancel = cancel or Cancel()
    ws = Workspace(job_id, s.path_base / job_id, s.host_base / job_id)
    container = JobContainer(deps.docker, job_id, deps.fetcher_id, deps.container_options)
    keepalive = KeepAlive(deps.api, job_id, s.keepalive_interval_s, cancel)
    deps.journal.add(job_id)
    keepalive.start(JobStatus.preprocessing)
    log.info("job %s: started (%s)", job_id, spec.handler.image_url)
    outcome = Outcome(JobStatus.error, "internal error")
    result: RunResult | None = None
    try:
        ws.validate(spec)
        ws.create()
        download_inputs(deps.api, job_id, spec, ws, cancel=cancel.event, workers=s.download_workers)
        _check(cancel)
        container.start(spec, ws, gpu_uuids or [], limits or Limits())
        keepalive.set_status(JobStatus.running)
        exit_code = container.wait(cancel.event)
        result = RunResult(
            exit_code, container.oom_killed, container.save_logs(_log_file(spec, ws))
        )
        _check(cancel)
        keepalive.set_status(JobStatus.postprocessing)
        upload_outputs(deps.api, job_id, spec, ws, cancel=cancel.event, workers=s.download_workers)
        outcome = _outcome_of(result)
    except (Interrupted, JobGone):
        outcome = _cancelled(cancel)
    except JobError as exc:
        outcome = _failed(str(exc).removeprefix(f"job {job_id}: "), result)
    except (ApiError, FetcherError) as exc:
        outcome = _cancelled(cancel) if cancel.is_set() else _failed(f"fetcher: {exc}", result)
    except Exception as exc:
        log.exception("job %s: unexpected failure", job_id)
        outcome = Outcome(JobStatus.error, f"fetcher internal error: {type(exc).__name__}: {exc}")
    finally:
        keepalive.stop()
        container.remove()
        _remove_workspace(ws, outcome, s.keep_failed_job_dirs, container, spec.handler.image_url)
    report(deps, job_id, outcome)
    return outcome


def _check(cancel: Cancel) -> None:
    if cancel.is_set():
        raise Interrupted(cancel.reason or "cancelled")


def _log_file(spec: JobSpecs, ws: Workspace) -> Any:
    log_dir = (spec.handler.files_up or {}).get(UploadType.log)
    return (
        ws.inside(log_dir, "handler.files_up['log']") / CONTAINER_LOG
        if log_dir is not None
        else None
    )


def _outcome_of(result: RunResult) -> Outcome:
    if result.exit_code == 0:
        return Outcome(JobStatus.finished, "exit_code: 0")
    return Outcome(JobStatus.error, result.describe())


def _failed(reason: str, result: RunResult | None) -> Outcome:
    """An error after the container ended still says how it ended (upload failures, say)."""
    if result is None:
        return Outcome(JobStatus.error, reason)
    return Outcome(JobStatus.error, f"{reason}\n(the container had ended: {result.describe()})")


def _cancelled(cancel: Cancel) -> Outcome:
    if cancel.gone:
        return Outcome(None, cancel.reason or "gone")
    return Outcome(JobStatus.error, cancel.reason or "cancelled")


def _remove_workspace(
    ws: Workspace, outcome: Outcome, keep_failed: bool, container: JobContainer, image: str
) -> None:
    if keep_failed and outcome.status == JobStatus.error:
        log.info("job %s: keeping job directory %s (KEEP_FAILED_JOB_DIRS)", ws.job_id, ws.path)
        return
    if not ws.remove():
        # files the job wrote as root, and a fetcher that is not root: delete them as root, in a container
        container.purge(ws, image)
        if not ws.remove():
            log.error("job %s: job directory %s is left behind", ws.job_id, ws.path)


def report(deps: JobDeps, job_id: str, outcome: Outcome) -> None:
    """Hand the final status to the outbox (kept on disk until delivered), then forget the job."""
    if outcome.status is None:
        log.info("job %s: dropped: %s", job_id, outcome.details)
    else:
        first_line = outcome.details.splitlines()[0] if outcome.details else ""
        log.info("job %s: %s (%s)", job_id, outcome.status.value, first_line)
        deps.outbox.report(job_id, outcome.status, outcome.details)
    deps.journal.remove(job_id)
