"""Emptying a job directory as root, in a container: a job's processes may write files (as root)
that a fetcher running as a plain user cannot delete. The container is made from the job's own
image (the only image known to be there), so it is the stranger's code: it is bounded like the
job, given no network, waited for a while, then removed whatever it does; its output is never read.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import docker.errors
import requests
from docker.types import LogConfig

from fetcher.engine.container import LABEL, LABEL_ID, LABEL_JOB, ContainerOptions
from fetcher.engine.errors import ENGINE_ERRORS
from fetcher.job.workspace import CONTAINER_MOUNT, Workspace

log = logging.getLogger(__name__)

PURGE_TIMEOUT_S = 60  # how long the container that empties a job directory may take


def purge_command() -> list[str]:
    return [
        "/bin/sh",
        "-c",
        f"rm -rf {CONTAINER_MOUNT}/..?* {CONTAINER_MOUNT}/.[!.]* {CONTAINER_MOUNT}/*",
    ]


def _purger_args(
    ws: Workspace, fetcher_id: str, job_id: str, o: ContainerOptions
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "entrypoint": purge_command()[:2],
        "network_disabled": True,
        "security_opt": ["no-new-privileges"],
        "cap_drop": list(o.cap_drop),
        "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        "volumes": {str(ws.host_path): {"bind": CONTAINER_MOUNT, "mode": "rw"}},
        "labels": {LABEL: "1", LABEL_ID: fetcher_id, LABEL_JOB: job_id},
    }
    if o.pids_limit > 0:
        kwargs["pids_limit"] = o.pids_limit
    return kwargs


def purge(
    client: Any, ws: Workspace, image: str, fetcher_id: str, options: ContainerOptions
) -> None:
    """Empty `ws` with a container of `image`. Only a real directory is ever mounted (the engine
    would follow a link). Never raises."""
    job_id = ws.job_id
    try:
        ws.check_mountable()
    except OSError as exc:
        log.error("job %s: not emptying %s with a container: %s", job_id, ws.path, exc)
        return
    log.info(
        "job %s: removing the job's files with a container (permission denied to the fetcher)",
        job_id,
    )
    purger = None
    try:
        kwargs = _purger_args(ws, fetcher_id, job_id, options)
        purger = client.containers.create(image, purge_command()[2:], **kwargs)
        purger.start()
        purger.wait(timeout=PURGE_TIMEOUT_S)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.error("job %s: could not empty the job directory with a container: %s", job_id, exc)
    finally:
        if purger is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                purger.remove(force=True)
