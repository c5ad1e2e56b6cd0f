"""A job's cleanup, once its status is reported (or handed to the deliverer): its container, its
copy of the output, and its directory. The same for a job that just ended and for what an earlier
life of the fetcher left (crash recovery)."""

from __future__ import annotations

import contextlib
import logging

from fetcher.engine.container import JobContainer
from fetcher.engine.purge import purge
from fetcher.job.deps import JobDeps
from fetcher.job.workspace import Workspace

log = logging.getLogger(__name__)


def clean_up(
    deps: JobDeps,
    container: JobContainer,
    *,
    image: str | None = None,
    keep_dir: bool = False,
) -> bool:
    """Remove the job's container (in any state), its output copy and, unless `keep_dir`, its
    directory: files the job wrote as another user are deleted as root in a container of `image`.
    Never raises. False when the container is still on the engine."""
    job_id = container.job_id
    removed = container.remove()
    with contextlib.suppress(OSError):
        deps.settings.state_dir.log_of(job_id).unlink(missing_ok=True)
    ws = Workspace(job_id, deps.settings.path_base, deps.settings.host_base)
    if keep_dir:
        log.info("job %s: keeping job directory %s (KEEP_FAILED_JOB_DIRS)", job_id, ws.path)
        return removed
    if ws.remove():
        return removed
    if image is not None:
        purge(deps.docker, ws, image, deps.fetcher_id, deps.container_options)
        if ws.remove():
            return removed
    log.error("job %s: job directory %s is left behind", job_id, ws.path)
    return removed
