"""The share each running job holds of what this box offers, and what is offered to the server.

A job holds its cores and memory (what it states, else one slot's share) and one GPU (the
smallest free one that fits) until its thread releases them; what is left is the next claim's
offer. A job that does not fit what is free gets a NoFit with the reason (it is handed back).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fetcher.host import Gpu, Host
from fetcher.models import ClaimOffer, HardwareSpecs
from fetcher.settings import Settings


@dataclass(frozen=True)
class NoFit:
    """Why a job does not fit what is free now."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def fits(gpu: Gpu, hw: HardwareSpecs) -> bool:
    """The job's GPU requirements (memory, model, architecture; null asks for nothing) hold."""
    return (
        (hw.gpu_mem or 0) <= gpu.memory_mb
        and hw.gpu_model in (None, gpu.model)
        and hw.gpu_archi in (None, gpu.archi)
    )


@dataclass
class Allocation:
    job_id: str
    cpu_cores: int
    memory_mb: int
    gpus: list[Gpu] = field(default_factory=list)


@dataclass(frozen=True)
class PoolSnapshot:
    """What is held and what is free, at one moment (for metrics and `fetcher status`)."""

    slots: int
    busy: int
    free_cpu_cores: int
    free_memory_mb: int
    gpus: list[str]  # "index:model:uuid" of every GPU this fetcher uses
    free_gpus: list[str]


class ResourcePool:
    """Slots and shares: each running job holds its cores, memory and GPU until released."""

    def __init__(
        self,
        host: Host,
        max_jobs: int | None,
        default_cpu: int | None = None,
        default_memory_mb: int | None = None,
    ) -> None:
        self.host = host
        self.max_jobs = max_jobs or max(1, len(host.gpus))
        # a job that states no cpu_cores / memory (the user-facing API's default) gets one slot's
        # share of the box: all of it on a one-GPU box, as the upstream fetcher gave; its container
        # is held to that share, and that share is what is counted (nothing is promised twice)
        self.default_cpu = default_cpu or max(1, host.cpu_cores // self.max_jobs)
        self.default_memory_mb = default_memory_mb or max(1, host.memory_mb // self.max_jobs)
        self.held: dict[str, Allocation] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, host: Host, settings: Settings) -> ResourcePool:
        return cls(
            host,
            settings.max_parallel_jobs,
            settings.job_default_cpu_cores,
            settings.job_default_memory_mb,
        )

    def _free(self) -> tuple[int, int, list[Gpu]]:
        cpu = self.host.cpu_cores - sum(a.cpu_cores for a in self.held.values())
        mem = self.host.memory_mb - sum(a.memory_mb for a in self.held.values())
        used = {g.uuid for a in self.held.values() for g in a.gpus}
        return cpu, mem, [g for g in self.host.gpus if g.uuid not in used]

    def offer(self, groups: list[str]) -> ClaimOffer | None:
        """What to ask the server for now; None when no slot is free."""
        with self._lock:
            if len(self.held) >= self.max_jobs:
                return None
            cpu, mem, gpus = self._free()
            if cpu < 1 or mem < 1:
                return None
            best = max(gpus, key=lambda g: g.memory_mb, default=None)
            return ClaimOffer(
                memory=mem,
                cpu_cores=cpu,
                groups=groups,
                gpu_mem=best.memory_mb if best else 0,
                gpu_model=best.model if best else None,
                gpu_archi=best.archi if best else None,
            )

    def allocate(self, job_id: str, hw: HardwareSpecs) -> Allocation | NoFit:
        """Reserve the job's share: the cores and memory it states (else one slot's), and the
        smallest free GPU that fits it (one per job, if it needs one)."""
        with self._lock:
            cpu, mem, gpus = self._free()
            need_cpu = hw.cpu_cores or self.default_cpu
            need_mem = hw.memory or self.default_memory_mb
            if len(self.held) >= self.max_jobs:
                return NoFit(f"no free slot ({self.max_jobs} jobs running)")
            if need_cpu > cpu:
                return NoFit(f"needs {need_cpu} CPU cores, {cpu} free")
            if need_mem > mem:
                return NoFit(f"needs {need_mem} MB memory, {mem} MB free")
            fitting = sorted((g for g in gpus if fits(g, hw)), key=lambda g: g.memory_mb)
            if hw.needs_gpu and not fitting:
                return NoFit(self._no_gpu_for(hw))
            alloc = Allocation(job_id, need_cpu, need_mem, fitting[:1])
            self.held[job_id] = alloc
            return alloc

    def _no_gpu_for(self, hw: HardwareSpecs) -> str:
        if not self.host.gpus:
            return "needs a GPU; this host has none"
        return (
            f"needs a GPU (gpu_mem={hw.gpu_mem}, gpu_model={hw.gpu_model}, "
            f"gpu_archi={hw.gpu_archi}); none of the free ones fits"
        )

    def allocate_exact(
        self, job_id: str, cpu_cores: int, memory_mb: int, gpu_uuids: list[str]
    ) -> Allocation:
        """Hold exactly this share (a job adopted after a restart keeps what it had), even if it
        is more than is free now."""
        with self._lock:
            gpus = [g for g in self.host.gpus if g.uuid in gpu_uuids]
            alloc = Allocation(job_id, cpu_cores, memory_mb, gpus)
            self.held[job_id] = alloc
            return alloc

    def snapshot(self) -> PoolSnapshot:
        with self._lock:
            cpu, mem, free = self._free()
            held = len(self.held)

        def name(g: Gpu) -> str:
            return f"{g.index}:{g.model}:{g.uuid}"

        return PoolSnapshot(
            self.max_jobs,
            held,
            cpu,
            mem,
            [name(g) for g in self.host.gpus],
            [name(g) for g in free],
        )

    def release(self, job_id: str) -> None:
        with self._lock:
            self.held.pop(job_id, None)

    def rename(self, job_id: str, key: str) -> None:
        """Keep a job's share held under another key (the job ended, its container did not)."""
        with self._lock:
            alloc = self.held.pop(job_id, None)
            if alloc is not None:
                self.held[key] = alloc

    @property
    def running(self) -> int:
        with self._lock:
            return len(self.held)
