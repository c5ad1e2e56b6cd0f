"""Wiring: build the worker and everything it needs from the settings (the only place that does),
and run it with its companion threads (the deliverer, the image upkeep, the metrics endpoint)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import docker

from fetcher import __version__, leftovers
from fetcher.api.client import WorkerApi
from fetcher.cancel import Cancel
from fetcher.delivery import Deliverer
from fetcher.engine.container import Limits, remove_container
from fetcher.engine.health import EngineHealth
from fetcher.errors import ConfigError, api_label
from fetcher.gpu.nvml import Nvml
from fetcher.gpu.watch import GpuWatch
from fetcher.host import Host, detect_host_and_board, open_nvml
from fetcher.images.ledger import ImageLedger
from fetcher.images.upkeep import ImageUpkeep
from fetcher.job.deps import JobDeps
from fetcher.job.pipeline import process_job
from fetcher.leftovers import Leftover
from fetcher.logs import RecentErrors
from fetcher.metrics import Metrics, settings_for_info
from fetcher.pool import ResourcePool
from fetcher.quarantine import Quarantine
from fetcher.recovery import ENGINE_LOST_KEY
from fetcher.settings import Settings
from fetcher.signals import SignalRelay
from fetcher.source import ApiJobSource
from fetcher.statedir import keep_to_ourselves
from fetcher.store import JobStore, StoreError
from fetcher.worker import Execute, JobStart, LoopOptions, Worker

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    worker: Worker
    deps: JobDeps
    host: Host
    lock: IO[str]
    errors: RecentErrors
    nvml: Nvml | None = None

    def install_signal_handlers(self) -> SignalRelay:
        """From the main thread, before `run` (so that recovery can be interrupted too)."""
        return SignalRelay(self.worker.handle_signal).install()

    def pending_reports(self) -> list[str]:
        return self.deps.deliverer.pending()

    def run(self) -> int:
        s = self.deps.settings
        logging.getLogger().addHandler(self.errors)
        if s.metrics_port is not None:
            port = self.deps.metrics.serve(s.metrics_port, s.metrics_host)
            log.info("worker: metrics on http://%s:%d/metrics", s.metrics_host, port)
        self.deps.deliverer.start()
        upkeep = self._image_upkeep().start()
        gpus = self.deps.gpus
        watch = None if gpus is None else GpuWatch(gpus, s.gpu_sample_interval_s).start()
        try:
            return self.worker.run()
        finally:
            if watch is not None:
                watch.stop()
            if self.nvml is not None:
                self.nvml.close()
            upkeep.stop()
            self.deps.deliverer.stop(flush_s=10.0)
            self.deps.metrics.close()
            self.deps.store.close()
            logging.getLogger().removeHandler(self.errors)
            self.lock.close()

    def _image_upkeep(self) -> ImageUpkeep:
        d = self.deps
        assert d.images is not None
        return ImageUpkeep(
            d.settings, d.docker, d.store, d.images, d.metrics, self.worker.stop_event
        )


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
    keep_to_ourselves(settings.path_base)
    lock = settings.state_dir.lock()
    stop, force = threading.Event(), threading.Event()
    try:
        deps = job_deps(settings, docker_client or connect_docker(), force)
    except BaseException:
        lock.close()
        raise
    gpu_lib = open_nvml(nvml)
    host, deps.gpus = detect_host_and_board(deps.docker.info(), settings, gpu_lib, deps.quarantine)
    pool = ResourcePool.from_settings(host, settings, deps.gpus)
    log.info(
        "worker: fetcher %s, %d CPU cores, %d MB, GPUs: %s",
        deps.fetcher_id,
        host.cpu_cores,
        host.memory_mb,
        ", ".join(f"{g.index}:{g.model}" for g in host.gpus) or "none",
    )
    errors = RecentErrors()
    source = ApiJobSource(deps, pool, errors)
    options = loop_options(settings, exit_when_idle, max_jobs)
    worker = Worker(source, pool, executor(deps), options, stop_event=stop, force_event=force)
    return Daemon(worker, deps, host, lock, errors, gpu_lib)


def job_deps(settings: Settings, client: Any, force: threading.Event) -> JobDeps:
    """The API client, the job store, the deliverer and the metrics every job uses."""
    api = WorkerApi.from_settings(settings, stop=force)
    store = JobStore(settings.state_dir.store)
    metrics = Metrics()
    metrics.set_info(__version__, settings_for_info(settings))
    api.http.observe = observer(metrics)
    return JobDeps(
        settings,
        api,
        client,
        store,
        Deliverer(store, api),
        settings.state_dir.identity(settings.fetcher_id),
        metrics=metrics,
        images=ImageLedger(settings.state_dir.images),
        quarantine=Quarantine(settings.quarantine_after_failures),
        engine=engine_health(client, store),
    )


def engine_health(client: Any, store: JobStore) -> EngineHealth:
    """The daemon's one watch on its engine; the store keeps, for crash recovery, since when the
    engine has not answered (and forgets it once the engine answers again)."""
    return EngineHealth(
        client,
        on_lost=lambda at: remember_engine_lost(store, at),
        on_back=lambda: remember_engine_lost(store, None),
    )


def remember_engine_lost(store: JobStore, at: float | None) -> None:
    """Kept for crash recovery: a job container that ended after this moment may have been
    stopped by the engine's restart (recovery hands it back instead of reporting its exit).
    None once the engine answers again: a container that ends later ends on its own."""
    try:
        store.set_meta(ENGINE_LOST_KEY, at)
    except StoreError as exc:
        log.warning("worker: could not note the engine's loss in the job store: %s", exc)


def executor(deps: JobDeps) -> Execute:
    """How the loop runs a job: the pipeline, with the share the pool gave it (a staged job waits
    for its share before its container starts)."""

    def execute(job: JobStart, cancel: Cancel) -> Leftover | None:
        outcome = process_job(
            job.job_id,
            job.spec,
            deps,
            cancel=cancel,
            gpu_uuids=[g.uuid for g in job.alloc.gpus],
            limits=Limits(job.alloc.cpu_cores, job.alloc.memory_mb),
            resume=job.resume,
            turn=None if job.alloc.behind is None else job.alloc,
            on_exit=job.ended,
            on_give_up=job.gave_up,
        )
        deps.quarantine.record(outcome, [g.uuid for g in job.alloc.gpus])
        left = outcome.container_left
        if left is None:
            return None
        away = deps.engine is not None and deps.engine.lost_at is not None
        return Leftover(lambda: remove_container(deps.docker, left) is None, engine_away=away)

    return execute


def loop_options(settings: Settings, exit_when_idle: bool, max_jobs: int | None) -> LoopOptions:
    return LoopOptions(
        poll_interval_s=settings.poll_interval_s,
        groups=tuple(settings.group_list),
        exit_when_idle=exit_when_idle,
        exit_idle_polls=settings.exit_idle_polls,
        max_jobs=max_jobs,
        drain_timeout_s=settings.drain_timeout_s,
        max_backoff_s=settings.api_backoff_max_s,
        force_grace_s=settings.stop_grace_s + 30,
        leftover_retry_s=leftovers.LEFTOVER_RETRY_S,
    )


def observer(metrics: Metrics) -> Callable[[str, BaseException | None, int], None]:
    """What the HTTP helper tells of each named call, as metrics."""

    def observe(name: str, failure: BaseException | None, retries: int) -> None:
        metrics.api_call(name, api_label(failure))
        for _ in range(retries):
            metrics.api_retry(name)

    return observe


def heartbeat_age_s(settings: Settings) -> float | None:
    path = settings.state_dir.heartbeat
    return time.time() - path.stat().st_mtime if path.exists() else None
