"""Wiring: build the worker and everything it needs from the settings (the only place that does)."""

from __future__ import annotations

import fcntl
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker

from fetcher.api.client import WorkerApi
from fetcher.delivery import Deliverer
from fetcher.errors import ConfigError, InvalidJobSpec
from fetcher.job.container import Limits
from fetcher.job.keepalive import Cancel
from fetcher.job.pipeline import JobDeps, Resume, process_job
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs, JobStatus
from fetcher.recovery import recover
from fetcher.resources import Allocation, Host, ResourcePool, detect_gpus, detect_host
from fetcher.settings import Settings
from fetcher.store import JobStore
from fetcher.worker import Adoption, LoopOptions, SignalRelay, Worker

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"
STORE = "jobs.sqlite"
CLAIM_RETRY_S = 5.0  # the loop has its own backoff between claims


class ApiJobSource:
    """The worker-facing API and the fetcher's durable state, as the loop needs them."""

    def __init__(self, deps: JobDeps, heartbeat: Path) -> None:
        self.deps = deps
        self.heartbeat = heartbeat

    def recover(self, stop: threading.Event) -> list[Adoption]:
        return recover(self.deps, stop)

    def claim(self, offer: ClaimOffer, stop: threading.Event) -> ClaimResult:
        return self.deps.api.claim_jobs(offer, retry_s=CLAIM_RETRY_S, interrupt=stop)

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
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
        self.deps.deliverer.submit(
            invalid.job_id, JobStatus.error, f"invalid job spec: {invalid.field}: {invalid.problem}"
        )

    def hand_back(self, job_id: str, reason: str) -> None:
        self.deps.deliverer.submit(job_id, JobStatus.queued, f"handed back by the worker: {reason}")

    def housekeeping(self, running: int) -> None:
        self.heartbeat.touch()

    def api_reachable(self) -> None:
        self.deps.deliverer.retry_now()


def state_lock(state_dir: Path) -> IO[str]:
    """One fetcher per PATH_BASE: a second one gets a clear error instead of fighting over jobs."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
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

    def install_signal_handlers(self) -> SignalRelay:
        """From the main thread, before `run` (so that recovery can be interrupted too)."""
        return SignalRelay(self.worker.handle_signal).install()

    def pending_reports(self) -> list[str]:
        return self.deps.deliverer.pending()

    def run(self) -> int:
        self.deps.deliverer.start()
        try:
            return self.worker.run()
        finally:
            self.deps.deliverer.stop(flush_s=10.0)
            self.deps.store.close()
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
    try:
        client = docker_client or connect_docker()
        api = WorkerApi.from_settings(settings)
        store = JobStore(settings.state_dir / STORE)
    except BaseException:
        lock.close()
        raise
    deps = JobDeps(settings, api, client, store, Deliverer(store, api), fetcher_identity(settings))
    host = detect_host(client.info(), settings, detect_gpus(nvml))
    pool = ResourcePool.from_settings(host, settings)
    log.info(
        "worker: fetcher %s, %d CPU cores, %d MB, GPUs: %s",
        deps.fetcher_id,
        host.cpu_cores,
        host.memory_mb,
        ", ".join(f"{g.index}:{g.model}" for g in host.gpus) or "none",
    )

    def execute(
        job_id: str, spec: JobSpecs, alloc: Allocation, cancel: Cancel, resume: object
    ) -> None:
        process_job(
            job_id,
            spec,
            deps,
            cancel=cancel,
            gpu_uuids=[g.uuid for g in alloc.gpus],
            limits=Limits(alloc.cpu_cores, alloc.memory_mb),
            resume=resume if isinstance(resume, Resume) else None,
        )

    source = ApiJobSource(deps, settings.state_dir / HEARTBEAT)
    options = LoopOptions(
        poll_interval_s=settings.poll_interval_s,
        groups=tuple(settings.group_list),
        exit_when_idle=exit_when_idle,
        exit_idle_polls=settings.exit_idle_polls,
        max_jobs=max_jobs,
        drain_timeout_s=settings.drain_timeout_s,
        max_backoff_s=settings.api_backoff_max_s,
        force_grace_s=settings.stop_grace_s + 30,
    )
    return Daemon(Worker(source, pool, execute, options), deps, host, lock)


def heartbeat_age_s(settings: Settings) -> float | None:
    path = settings.state_dir / HEARTBEAT
    return time.time() - path.stat().st_mtime if path.exists() else None
