"""Crash recovery at start: what an earlier life of this fetcher (kill -9, power loss) left behind."""

from __future__ import annotations

import logging

import docker.errors
import requests

from fetcher.errors import ApiError, JobGone
from fetcher.job.container import LABEL_JOB, leftover_containers
from fetcher.job.pipeline import JobDeps
from fetcher.job.workspace import JOB_ID, Workspace
from fetcher.models import JobStatus

log = logging.getLogger(__name__)

RESTARTED = "worker restarted: the fetcher running this job was stopped abruptly"


def recover(deps: JobDeps) -> list[str]:
    """Stop and remove this fetcher's leftover containers, report their jobs `error` where the server
    still has them, and remove their job directories. Returns the job ids found."""
    containers = leftover_containers(deps.docker, deps.fetcher_id)
    jobs = set(deps.journal.entries())
    for c in containers:
        job_id = c.labels.get(LABEL_JOB, "?")
        jobs.add(job_id)
        log.warning(
            "job %s: removing container %s left by an earlier run (%s)",
            job_id,
            c.short_id,
            c.status,
        )
        try:
            c.stop(timeout=int(deps.settings.stop_grace_s))
            c.remove(force=True)
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.error("job %s: could not remove leftover container %s: %s", job_id, c.short_id, exc)
    kept = set(deps.outbox.pending())
    for job_id in sorted(jobs):
        if not JOB_ID.match(job_id):
            continue
        if job_id not in kept:
            _report_restarted(deps, job_id)
        ws = Workspace.for_job(job_id, deps.settings.path_base, deps.settings.host_base)
        if ws.path.exists() and ws.remove():
            log.info("job %s: removed job directory left by an earlier run", job_id)
        deps.journal.remove(job_id)
    return sorted(jobs)


def _report_restarted(deps: JobDeps, job_id: str) -> None:
    try:
        status = deps.api.get_status(job_id, retry_s=10)
    except JobGone:
        log.info("job %s: the server no longer knows it; nothing to report", job_id)
        return
    except ApiError as exc:
        log.warning(
            "job %s: could not ask the server about it (%s); reporting error anyway", job_id, exc
        )
        status = None
    if status is not None and status.is_final:
        return
    deps.outbox.report(job_id, JobStatus.error, RESTARTED)
