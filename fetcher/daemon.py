"""Wiring: build the worker and everything it needs from the settings (the only place that does)."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker

from fetcher import __version__
from fetcher.api.client import WorkerApi
from fetcher.delivery import Deliverer
from fetcher.errors import ApiError, ConfigError, InvalidJobSpec
from fetcher.image_ledger import LEDGER_FILE, ImageLedger
from fetcher.images import gb_to_bytes, prune_images
from fetcher.job.container import Limits, remove_container
from fetcher.job.keepalive import Cancel
from fetcher.job.pipeline import JobDeps, Resume, process_job
from fetcher.logs import RecentErrors
from fetcher.metrics import Metrics, api_outcome, settings_for_info
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs, JobStatus
from fetcher.recovery import recover
from fetcher.resources import Allocation, Host, ResourcePool, detect_gpus, detect_host
from fetcher.settings import Settings
from fetcher.store import HEARTBEAT_FILE, STORE_FILE, JobStore
from fetcher.worker import Adoption, Leftover, LoopOptions, SignalRelay, Worker

log = logging.getLogger(__name__)

CLAIM_RETRY_S = 5.0  # the loop has its own backoff between claims


class ApiJobSource:
    """The worker-facing API and the fetcher's durable state, as the loop needs them."""

    def __init__(
        self, deps: JobDeps, pool: ResourcePool, heartbeat: Path, errors: RecentErrors
    ) -> None:
        self.deps = deps
        self.pool = pool
        self.heartbeat = heartbeat
        self.errors = errors
        self.api_problem: str | None = None
        self.last_claim: float | None = None
        self.paused: str | None = None  # why no claim is made now (shown by `fetcher status`)

    def recover(self, stop: threading.Event) -> list[Adoption]:
        return recover(self.deps, stop)

    def claim(self, offer: ClaimOffer, stop: threading.Event) -> ClaimResult:
        self.paused = self._disk_too_low()
        if self.paused is not None:
            return ClaimResult(paused=self.paused)
        try:
            result = self.deps.api.claim_jobs(offer, retry_s=CLAIM_RETRY_S, interrupt=stop)
        except ApiError as exc:
            self.api_problem = str(exc)
            raise
        self.api_problem = None
        self.last_claim = time.time()
        self.deps.metrics.claim_succeeded()
        return result

    def _disk_too_low(self) -> str | None:
        """Why not to claim now: PATH_BASE has less free space than MIN_FREE_DISK_MB (a job
        claimed then would fail on the disk and be handed back), or cannot be read. Logged when
        the reason comes and when it goes."""
        s = self.deps.settings
        if not s.min_free_disk_mb:
            return None
        try:
            free_mb = shutil.disk_usage(s.path_base).free // 2**20
        except OSError as exc:
            why: str | None = f"PATH_BASE cannot be read: {exc}"
        else:
            why = (
                f"{free_mb} MB free under PATH_BASE (MIN_FREE_DISK_MB={s.min_free_disk_mb})"
                if free_mb < s.min_free_disk_mb
                else None
            )
        if (why is None) != (self.paused is None):
            if why is not None:
                log.error("worker: claiming no job: %s", why)
            else:
                log.info("worker: claiming again (%d MB free under PATH_BASE)", free_mb)
        return why

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
        self.deps.metrics.job_ended("error", "invalid_spec")
        self.deps.deliverer.submit(
            invalid.job_id, JobStatus.error, f"invalid job spec: {invalid.field}: {invalid.problem}"
        )

    def hand_back(self, job_id: str, reason: str) -> None:
        self.deps.metrics.job_claimed()
        self.deps.metrics.job_ended("handed_back", "worker")
        self.deps.deliverer.submit(job_id, JobStatus.queued, f"handed back by the worker: {reason}")

    def housekeeping(self, running: int) -> None:
        self.heartbeat.touch()
        snap = self.pool.snapshot()
        pending = self.deps.deliverer.pending()
        m = self.deps.metrics
        m.set_slots(snap.busy, snap.slots)
        m.set_gpus(len(snap.gpus) - len(snap.free_gpus), len(snap.gpus))
        m.set_outbox(len(pending))
        self.deps.store.set_meta(
            "daemon",
            {
                "pid": os.getpid(),
                "fetcher_id": self.deps.fetcher_id,
                "version": __version__,
                "updated": time.time(),
                "slots": {"busy": snap.busy, "total": snap.slots},
                "free": {
                    "cpu_cores": snap.free_cpu_cores,
                    "memory_mb": snap.free_memory_mb,
                    "gpus": snap.free_gpus,
                },
                "gpus": snap.gpus,
                "reports_pending": pending,
                "api_problem": self.api_problem,
                "claims_paused": self.paused,
                "last_claim": self.last_claim,
                "errors": self.errors.lines(),
            },
        )

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


def keep_to_ourselves(path_base: Path) -> None:
    """PATH_BASE grants group and others nothing. Jobs run as root and write into their
    directories (0777, for whatever user the image runs as): a setuid-root program, or a file
    another job reads, must be out of every local user's reach. Containers do not need it: their
    bind mount starts at the job directory. Raises ConfigError if it cannot be done."""
    try:
        mode = stat.S_IMODE(path_base.stat().st_mode)
        if mode & 0o077:
            path_base.chmod(mode & ~0o077)
            log.warning(
                "worker: PATH_BASE %s was open to other users (%o); now %o",
                path_base,
                mode,
                mode & ~0o077,
            )
    except OSError as exc:
        raise ConfigError(f"PATH_BASE: cannot restrict {path_base} to this user: {exc}") from None


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
    errors: RecentErrors

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
        pruner = ImagePruner(self.deps, self.worker.stop_event).start()
        try:
            return self.worker.run()
        finally:
            pruner.stop()
            self.deps.deliverer.stop(flush_s=10.0)
            self.deps.metrics.close()
            self.deps.store.close()
            logging.getLogger().removeHandler(self.errors)
            self.lock.close()


class ImagePruner:
    """Every IMAGE_PRUNE_INTERVAL_S, in a thread of its own: remove the job images the policy
    (IMAGE_KEEP_DAYS, IMAGE_CACHE_MAX_GB) lets go, never one in use or about to be."""

    def __init__(self, deps: JobDeps, stop: threading.Event) -> None:
        self.deps = deps
        self.stop_event = stop
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pruner", daemon=True)

    def start(self) -> ImagePruner:
        s = self.deps.settings
        if self.deps.images is not None and (s.image_keep_days or s.image_cache_max_gb):
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def prune_once(self) -> list[str]:
        s, ledger = self.deps.settings, self.deps.images
        if ledger is None:
            return []
        starting = [
            str((r.spec or {}).get("handler", {}).get("image_url", ""))
            for r in self.deps.store.jobs()
            if r.phase == "claimed"
        ]
        gone = prune_images(
            self.deps.docker,
            ledger.snapshot(),
            keep_days=s.image_keep_days,
            max_total_bytes=gb_to_bytes(s.image_cache_max_gb),
            keep_refs=[ref for ref in starting if ref],
            metrics=self.deps.metrics,
        )
        ledger.forget(gone)
        return gone

    def _run(self) -> None:
        interval = self.deps.settings.image_prune_interval_s
        while not self._halt.is_set() and not self.stop_event.is_set():
            try:
                self.prune_once()
            except Exception:
                log.exception("images: pruning failed; trying again later")
            if self._halt.wait(interval):
                return


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
    lock = state_lock(settings.state_dir)
    stop, force = threading.Event(), threading.Event()
    try:
        client = docker_client or connect_docker()
        api = WorkerApi.from_settings(settings, stop=force)
        store = JobStore(settings.state_dir / STORE_FILE)
    except BaseException:
        lock.close()
        raise
    metrics = Metrics()
    metrics.set_info(__version__, settings_for_info(settings))
    api.http.observe = observer(metrics)
    deps = JobDeps(
        settings,
        api,
        client,
        store,
        Deliverer(store, api),
        fetcher_identity(settings),
        metrics=metrics,
        images=ImageLedger(settings.state_dir / LEDGER_FILE),
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

    def execute(
        job_id: str, spec: JobSpecs, alloc: Allocation, cancel: Cancel, resume: object
    ) -> Leftover | None:
        outcome = process_job(
            job_id,
            spec,
            deps,
            cancel=cancel,
            gpu_uuids=[g.uuid for g in alloc.gpus],
            limits=Limits(alloc.cpu_cores, alloc.memory_mb),
            resume=resume if isinstance(resume, Resume) else None,
        )
        left = outcome.container_left
        return None if left is None else lambda: remove_container(client, left) is None

    errors = RecentErrors()
    source = ApiJobSource(deps, pool, settings.state_dir / HEARTBEAT_FILE, errors)
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
    worker = Worker(source, pool, execute, options, stop_event=stop, force_event=force)
    return Daemon(worker, deps, host, lock, errors)


def observer(metrics: Metrics) -> Callable[[str, BaseException | None, int], None]:
    """What the HTTP helper tells of each named call, as metrics."""

    def observe(name: str, failure: BaseException | None, retries: int) -> None:
        metrics.api_call(name, api_outcome(failure))
        for _ in range(retries):
            metrics.api_retry(name)

    return observe


def heartbeat_age_s(settings: Settings) -> float | None:
    path = settings.state_dir / HEARTBEAT_FILE
    return time.time() - path.stat().st_mtime if path.exists() else None
