"""What a job needs from the outside world; built once by the daemon (`fetcher.daemon`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fetcher.api.client import WorkerApi
from fetcher.delivery import Deliverer
from fetcher.engine.container import ContainerOptions
from fetcher.engine.health import EngineHealth
from fetcher.gpu.board import GpuBoard
from fetcher.images.ledger import ImageLedger
from fetcher.metrics import Metrics
from fetcher.quarantine import Quarantine
from fetcher.settings import Settings
from fetcher.store import JobStore


def container_options(s: Settings) -> ContainerOptions:
    """The container settings of every job, from the settings."""
    return ContainerOptions(
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


@dataclass
class JobDeps:
    settings: Settings
    api: WorkerApi
    docker: Any
    store: JobStore
    deliverer: Deliverer
    fetcher_id: str
    metrics: Metrics = field(default_factory=Metrics)
    images: ImageLedger | None = None  # the job images used, for pruning
    gpus: GpuBoard | None = None  # the GPUs' state (None: no NVML)
    engine: EngineHealth | None = None  # whether the engine answers (one per daemon)
    quarantine: Quarantine = field(default_factory=lambda: Quarantine(3))
    container_options: ContainerOptions = field(init=False)

    def __post_init__(self) -> None:
        self.container_options = container_options(self.settings)
