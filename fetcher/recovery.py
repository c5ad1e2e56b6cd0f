"""Crash recovery at start: what an earlier life of this fetcher (kill -9, power loss) left behind.

Each job the store knows, and each container of this fetcher on the engine, is settled once:
- a status waiting for delivery: its container and directory go; the deliverer sends the status.
- the server no longer has the job for us (GET status: 404, `queued` after a time-out, a final
  status, or given to another worker): left alone; nothing is sent; its container and directory go.
- its container still exists: the job is adopted and run on from there, as if nothing happened
  (a running container is waited for; an ended one's outputs are uploaded and its exit reported).
- no container (the fetcher died before starting it): handed back to the queue; a staged job
  (STAGE_AHEAD: its container created, waiting for its GPU) whatever ON_WORKER_FAILURE says.
Leftover job directories (queue-id names no job owns) are removed, links never followed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fetcher.engine.container import LABEL_JOB, JobContainer, leftover_containers
from fetcher.engine.errors import ENGINE_ERRORS
from fetcher.engine.health import ENGINE_STOPPED, ended_while_away
from fetcher.errors import ApiError, Interrupted, JobGone
from fetcher.job import safefs
from fetcher.job.cleanup import clean_up
from fetcher.job.deps import JobDeps
from fetcher.lifecycle import Stage
from fetcher.models import JobSpecs, JobStatus, valid_queue_id
from fetcher.outcome import after_restart
from fetcher.ownership import still_ours
from fetcher.store import JobRecord
from fetcher.worker import Adoption

log = logging.getLogger(__name__)

RESTARTED = "the worker restarted before the job's container started"
STAGED_RESTARTED = "the worker restarted while the job was staged; its container never started"
ENGINE_LOST_KEY = "engine_lost_at"  # store meta: when this fetcher last saw its engine go away


@dataclass(frozen=True)
class ServerView:
    """What the server said of a job: `reachable` False when it could not be asked."""

    reachable: bool
    status: JobStatus | None = None  # None: 404, the server does not know the job

    @property
    def moved_on(self) -> bool:
        """The server no longer has the job for us: leave it alone."""
        return self.reachable and not still_ours(self.status)

    def __str__(self) -> str:
        return "gone" if self.status is None else self.status.value


def recover(deps: JobDeps, stop: threading.Event) -> list[Adoption]:
    """Settle what an earlier life left; returns the jobs to adopt."""
    by_job = _containers_by_job(deps)
    records = {r.job_id: r for r in deps.store.jobs()}
    engine_lost_at = deps.store.get_meta(ENGINE_LOST_KEY)
    adopted: list[Adoption] = []
    complete = True  # every job settled: the engine-lost marker has served
    for job_id in sorted(set(records) | set(by_job), key=int):
        if stop.is_set():
            log.info("recovery: stop requested; the rest is settled at the next start")
            complete = False
            break
        try:
            container, rec = by_job.get(job_id), records.get(job_id)
            unreported = rec is None or rec.report is None
            if unreported and stopped_by_engine(deps, container, engine_lost_at):
                hand_back(deps, job_id, rec, container, engine_stopped(container))
                continue
            found = settle(deps, job_id, rec, container, stop)
        except Exception:
            log.exception("job %s: recovery failed; leaving it for the next start", job_id)
            complete = False
            continue
        if found is not None:
            adopted.append(found)
    remove_stray_dirs(deps, keep={a.job_id for a in adopted} | set(records))
    if engine_lost_at is not None and complete:
        deps.store.set_meta(ENGINE_LOST_KEY, None)
    return adopted


def stopped_by_engine(deps: JobDeps, container: Any, lost_at: object) -> bool:
    """A container that ended after this fetcher last saw its engine go away, on an engine
    without live-restore: the engine's restart stopped it, not the job (whose exit it reports
    all the same: no field of the container tells the two apart)."""
    if container is None or not isinstance(lost_at, int | float):
        return False
    if str(getattr(container, "status", "")) != "exited":
        return False
    if not ended_while_away(container, lost_at):
        return False
    return deps.engine is None or not deps.engine.live_restore()


def engine_stopped(container: Any) -> str:
    code = container.attrs.get("State", {}).get("ExitCode")
    return ENGINE_STOPPED.format(code=code)


def _containers_by_job(deps: JobDeps) -> dict[str, Any]:
    """This fetcher's containers on the engine, by queue id (one without a valid id goes)."""
    try:
        containers = leftover_containers(deps.docker, deps.fetcher_id)
    except ENGINE_ERRORS as exc:
        log.error("recovery: cannot list this fetcher's containers: %s", exc)
        return {}
    by_job: dict[str, Any] = {}
    for c in containers:
        job_id = valid_queue_id(c.labels.get(LABEL_JOB, ""))
        if job_id is None:
            log.warning("recovery: removing container %s with no valid job label", c.short_id)
            _remove_container(c)
        else:
            by_job[job_id] = c
    return by_job


def settle(
    deps: JobDeps, job_id: str, rec: JobRecord | None, container: Any, stop: threading.Event
) -> Adoption | None:
    if rec is not None and rec.report is not None:
        log.info("job %s: its %s status waits for delivery", job_id, rec.report.status.value)
        clean(deps, job_id, container, rec)
        return None
    view = ask_server(deps, job_id, stop)
    if view.moved_on:
        log.info(
            "job %s: left by an earlier run; the server has it as %s: leaving it alone",
            job_id,
            view,
        )
        clean(deps, job_id, container, rec)
        deps.store.forget(job_id)
        return None
    spec = _spec(rec)
    if container is not None and _never_started(container):
        # created, never started (the fetcher died between create and start): the engine's wait
        # on it would answer exit code 0 at once, as if the job had run and succeeded
        log.info("job %s: its container %s was never started", job_id, container.short_id)
        _remove_container(container)
        container = None
    if container is not None and spec is not None and rec is not None:
        log.info(
            "job %s: its container %s outlived the fetcher; adopting it", job_id, container.short_id
        )
        return Adoption(job_id, spec, rec.cpu_cores, rec.memory_mb, list(rec.gpus), container.id)
    staged = container is None and rec is not None and rec.stage == Stage.staged
    if staged:
        reason = STAGED_RESTARTED
    elif container is None:
        reason = RESTARTED
    else:
        reason = "the worker restarted and lost the job's record"
    hand_back(deps, job_id, rec, container, reason, verify=not view.reachable, staged=staged)
    return None


def hand_back(
    deps: JobDeps,
    job_id: str,
    rec: JobRecord | None,
    container: Any,
    reason: str,
    *,
    verify: bool = True,
    staged: bool = False,
) -> None:
    """Clean up what the job left and give it back to the queue (the deliverer asks the server
    first when `verify`: the job may have been re-queued meanwhile). `staged`: a staged job
    whose container never started, handed back whatever ON_WORKER_FAILURE says
    (`outcome.after_restart` decides)."""
    clean(deps, job_id, container, rec)
    outcome = after_restart(deps.settings.on_worker_failure, reason, staged=staged)
    assert outcome.status is not None
    log.warning("job %s: %s", job_id, outcome.details)
    deps.deliverer.submit(job_id, outcome.status, outcome.details, verify=verify)


def ask_server(deps: JobDeps, job_id: str, stop: threading.Event) -> ServerView:
    """The job's status on the server, or that it could not be asked."""
    try:
        return ServerView(True, deps.api.get_status(job_id, retry_s=30, interrupt=stop))
    except JobGone:
        return ServerView(True, None)
    except (ApiError, Interrupted) as exc:
        log.warning("job %s: cannot ask the server about it (%s)", job_id, exc)
        return ServerView(False)


def _spec(rec: JobRecord | None) -> JobSpecs | None:
    if rec is None or rec.spec is None:
        return None
    try:
        return JobSpecs.model_validate(rec.spec)
    except ValidationError:
        return None


def _never_started(c: Any) -> bool:
    return str(getattr(c, "status", "")) == "created"


def _remove_container(c: Any) -> None:
    try:
        c.remove(force=True)
    except ENGINE_ERRORS as exc:
        log.error("recovery: could not remove container %s: %s", c.short_id, exc)


def clean(deps: JobDeps, job_id: str, container: Any, rec: JobRecord | None) -> None:
    """What an earlier run left of the job: its container, directory and output copy."""
    if container is not None:
        log.info("job %s: removing container %s left by an earlier run", job_id, container.short_id)
    job = JobContainer(
        deps.docker, job_id, deps.fetcher_id, deps.container_options, container, engine=deps.engine
    )
    spec = _spec(rec)
    clean_up(deps, job, image=spec.handler.image_url if spec else None)


def remove_stray_dirs(deps: JobDeps, keep: set[str]) -> None:
    """Entries of PATH_BASE named like a queue id that no job owns: leftovers of an earlier life."""
    base = deps.settings.path_base
    if deps.settings.keep_failed_job_dirs:
        return  # what is there may be a failed job's directory kept for inspection
    try:
        names = [p.name for p in base.iterdir() if valid_queue_id(p.name) and p.name not in keep]
    except OSError as exc:
        log.error("recovery: cannot list PATH_BASE %s: %s", base, exc)
        return
    if not names:
        return
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                safefs.remove_entry(fd, name)
                log.info("recovery: removed %s left in PATH_BASE", name)
            except OSError as exc:
                log.error("recovery: could not remove %s from PATH_BASE: %s", name, exc)
    finally:
        os.close(fd)
