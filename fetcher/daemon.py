"""Wiring: build the worker and everything it needs from the settings (the only place that does)."""

from __future__ import annotations

import fcntl
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker

from fetcher.api.client import WorkerApi
from fetcher.errors import ApiError, ConfigError, InvalidJobSpec
from fetcher.job.container import Limits
from fetcher.job.keepalive import Cancel
from fetcher.job.pipeline import JobDeps, process_job
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs, JobStatus
from fetcher.outbox import Journal, Outbox
from fetcher.recovery import recover
from fetcher.resources import Allocation, Host, ResourcePool, detect_gpus, detect_host
from fetcher.settings import Settings
from fetcher.worker import LoopOptions, Worker

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"


class ApiJobSource:
    """The worker-facing API as the loop needs it."""

    def __init__(self, api: WorkerApi, outbox: Outbox, heartbeat: Path) -> None:
        self.api = api
        self.outbox = outbox
        self.heartbeat = heartbeat

    def claim(self, offer: ClaimOffer) -> ClaimResult:
        return self.api.claim_jobs(offer, retry_s=5)

    def reject(self, invalid: InvalidJobSpec) -> None:
        log.error("%s", invalid)
        self.outbox.report(
            invalid.job_id, JobStatus.error, str(invalid).removeprefix(f"job {invalid.job_id}: ")
        )

    def hand_back(self, job_id: str, reason: str) -> None:
        try:
            self.api.put_status(job_id, JobStatus.queued, reason, retry_s=30)
        except ApiError as exc:
            log.error(
                "job %s: could not hand it back (%s); the server will re-queue it when it times out",
                job_id,
                exc,
            )

    def housekeeping(self) -> None:
        self.outbox.flush()
        self.heartbeat.touch()


def state_lock(state_dir: Path) -> IO[str]:
    """One fetcher per PATH_BASE: a second one gets a clear error instead of fighting over jobs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = (state_dir / "lock").open("w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ConfigError(
            f"PATH_BASE: another fetcher is already using {state_dir.parent}"
        ) from None
    return fh


def fetcher_identity(settings: Settings) -> str:
    """A stable id for this fetcher (kept under PATH_BASE), so that a restart finds its own leftovers."""
    if settings.fetcher_id:
        return settings.fetcher_id
    path = settings.state_dir / "id"
    if not path.exists():
        path.write_text(secrets.token_hex(4))
    return path.read_text().strip()


@dataclass
class Daemon:
    worker: Worker
    deps: JobDeps
    host: Host
    lock: IO[str]

    def run(self) -> int:
        try:
            return self.worker.run()
        finally:
            self.lock.close()


def connect_docker() -> Any:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise ConfigError(
            f"docker: cannot reach the Docker engine ({exc}); is the socket mounted?"
        ) from None


def build_daemon(
    settings: Settings,
    *,
    exit_when_idle: bool = False,
    max_jobs: int | None = None,
    docker_client: Any = None,
    nvml: Any = None,
) -> Daemon:
    if not settings.path_base.is_dir():
        raise ConfigError(f"PATH_BASE: {settings.path_base} is not a directory")
    lock = state_lock(settings.state_dir)
    client = docker_client or connect_docker()
    api = WorkerApi.from_settings(settings)
    outbox = Outbox(
        settings.state_dir / "outbox",
        lambda j, s, d: api.put_status(j, s, d, retry_s=min(settings.api_retry_s, 30)),
    )
    deps = JobDeps(
        settings,
        api,
        client,
        outbox,
        Journal(settings.state_dir / "jobs"),
        fetcher_identity(settings),
    )
    host = detect_host(client.info(), settings, detect_gpus(nvml))
    pool = ResourcePool.from_settings(host, settings)
    log.info(
        "worker: fetcher %s, %d CPU cores, %d MB, GPUs: %s",
        deps.fetcher_id,
        host.cpu_cores,
        host.memory_mb,
        ", ".join(f"{g.index}:{g.model}" for g in host.gpus) or "none",
    )
    recover(deps)

    def execute(job_id: str, spec: JobSpecs, alloc: Allocation, cancel: Cancel) -> None:
        process_job(
            job_id,
            spec,
            deps,
            cancel=cancel,
            gpu_uuids=[g.uuid for g in alloc.gpus],
            limits=Limits(alloc.cpu_cores, alloc.memory_mb),
        )

    source = ApiJobSource(api, outbox, settings.state_dir / HEARTBEAT)
    options = LoopOptions(
        poll_interval_s=settings.poll_interval_s,
        groups=tuple(settings.group_list),
        exit_when_idle=exit_when_idle,
        exit_idle_polls=settings.exit_idle_polls,
        max_jobs=max_jobs,
        drain_timeout_s=settings.drain_timeout_s,
        max_backoff_s=settings.api_backoff_max_s,
    )
    return Daemon(Worker(source, pool, execute, options), deps, host, lock)


def heartbeat_age_s(settings: Settings) -> float | None:
    path = settings.state_dir / HEARTBEAT
    return time.time() - path.stat().st_mtime if path.exists() else None
