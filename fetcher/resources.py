"""What this box offers (CPU, memory, GPUs via NVML), and the share each running job holds."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fetcher.models import ClaimOffer, HardwareSpecs
from fetcher.settings import Settings

log = logging.getLogger(__name__)

# NVML's nvmlDeviceGetArchitecture values
ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_mb: int
    archi: str | None


@dataclass(frozen=True)
class Host:
    cpu_cores: int
    memory_mb: int
    gpus: tuple[Gpu, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def detect_gpus(nvml: Any = None) -> list[Gpu]:
    """The GPUs NVML shows this process; [] where there is no NVIDIA driver. `nvml`: pynvml or a fake."""
    if nvml is None:
        import pynvml

        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any NVMLError (LibraryNotFound, DriverNotLoaded, ...)
        log.info("resources: no NVIDIA GPU visible (%s)", exc)
        return []
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                archi = ARCHITECTURES.get(int(nvml.nvmlDeviceGetArchitecture(handle)))
            except Exception:  # noqa: BLE001 - old drivers lack the call
                archi = None
            gpus.append(
                Gpu(
                    index=i,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    model=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024),
                    archi=archi,
                )
            )
        return gpus
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("resources: nvmlShutdown failed", exc_info=True)


def slurm_gpu_selection(environ: Mapping[str, str]) -> list[str] | None:
    """The GPUs Slurm gave this job, as Slurm names them: GPU UUIDs or global indices.

    None outside a Slurm job (no SLURM_JOB_ID): then every GPU NVML shows is this fetcher's.
    [] in a Slurm job that was given no GPU: the node's GPUs belong to other jobs.

    What the variables mean (Slurm's sbatch(1)/srun(1) man pages, "OUTPUT ENVIRONMENT VARIABLES",
    and the "GPU Management" section of https://slurm.schedmd.com/gres.html):
    - SLURM_STEP_GPUS: the global GPU IDs of the GPUs allocated to this step (srun steps only).
    - SLURM_JOB_GPUS: the global GPU IDs allocated to this job (batch and interactive jobs).
      Both are "not relative to any device cgroup, even if devices are constrained with
      task/cgroup". Global ids number the node's GPUs in PCI bus order (gres_common.c), which is
      also NVML's order, so they are NVML indices of an unconstrained view.
    - CUDA_VISIBLE_DEVICES: set by the gres/gpu plugin for each step. With ConstrainDevices it is
      relative to the devices the job's cgroup lets through ("0" for a job given /dev/nvidia1);
      with gres.conf's env_uuid flag (and for MIG) it holds UUIDs (GPU-..., MIG-...).
      "NoDevFiles" means gres.conf names no device files: it says nothing about which GPU.
    The order: UUIDs in CUDA_VISIBLE_DEVICES (exact), then the step's and the job's global ids,
    then CUDA_VISIBLE_DEVICES' indices (possibly relative; `pick_slurm_gpus` copes with that).
    """
    if not environ.get("SLURM_JOB_ID"):
        return None

    def items(name: str) -> list[str]:
        value = environ.get(name, "")
        return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "NoDevFiles"]

    cuda = items("CUDA_VISIBLE_DEVICES")
    if cuda and all(v.startswith(("GPU-", "MIG-")) for v in cuda):
        return cuda
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if items(name):
            return items(name)
    return cuda


def pick_slurm_gpus(gpus: list[Gpu], selection: list[str]) -> list[Gpu]:
    """The GPUs NVML shows (`gpus`) that are the job's (`selection`, from slurm_gpu_selection).

    UUIDs match exactly. Indices need care: when the job's cgroup constrains devices, NVML itself
    only shows the job's GPUs and numbers them from 0, so a global index such as "2" names no
    visible GPU (or another of the job's own). A constrained view never shows more GPUs than the
    job has, and an unconstrained one shows the whole node; hence: NVML shows no more GPUs than
    the job was given -> every visible GPU is the job's; more -> the node's, matched by index.
    Either way a GPU of another job is never picked.
    """
    uuids = [s for s in selection if s.startswith(("GPU-", "MIG-"))]
    indices = [s for s in selection if s.isdigit()]
    if uuids:
        return [g for g in gpus if g.uuid in uuids]
    if not indices:
        return []
    if len(gpus) <= len(indices):
        return list(gpus)
    return [g for g in gpus if str(g.index) in indices]


def detect_host(
    docker_info: dict[str, Any],
    settings: Settings,
    gpus: list[Gpu],
    environ: Mapping[str, str] | None = None,
) -> Host:
    """CPU and memory of the engine that runs the jobs (right even when the fetcher is in a container),
    capped or overridden by the settings; GPUs restricted to GPUS when set, else, in a Slurm job,
    to the job's GPUs."""
    cpu = settings.cpu_cores or int(docker_info.get("NCPU") or 1)
    mem = settings.memory_mb or int(docker_info.get("MemTotal") or 0) // (1024 * 1024)
    cpu = max(cpu - settings.reserve_cpu_cores, 0)
    mem = max(mem - settings.reserve_memory_mb, 0)
    chosen = settings.gpu_selection
    if chosen:
        gpus = [g for g in gpus if g.uuid in chosen or str(g.index) in chosen]
    else:
        slurm = slurm_gpu_selection(os.environ if environ is None else environ)
        if slurm is not None:
            picked = pick_slurm_gpus(gpus, slurm)
            log.info(
                "resources: Slurm job: GPUs %s -> %s",
                ",".join(slurm) or "none",
                ", ".join(f"{g.index}:{g.uuid}" for g in picked) or "none",
            )
            gpus = picked
    return Host(cpu, mem, tuple(gpus))


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

    def allocate(self, job_id: str, hw: HardwareSpecs) -> Allocation | str:
        """Reserve the job's share; a string says why it does not fit what is free."""
        with self._lock:
            cpu, mem, gpus = self._free()
            need_cpu = hw.cpu_cores or self.default_cpu
            need_mem = hw.memory or self.default_memory_mb
            if len(self.held) >= self.max_jobs:
                return f"no free slot ({self.max_jobs} jobs running)"
            if need_cpu > cpu:
                return f"needs {need_cpu} CPU cores, {cpu} free"
            if need_mem > mem:
                return f"needs {need_mem} MB memory, {mem} MB free"
            fitting = [
                g
                for g in gpus
                if (hw.gpu_mem or 0) <= g.memory_mb
                and hw.gpu_model in (None, g.model)
                and hw.gpu_archi in (None, g.archi)
            ]
            if hw.needs_gpu and not fitting:
                if not self.host.gpus:
                    return "needs a GPU; this host has none"
                return (
                    f"needs a GPU (gpu_mem={hw.gpu_mem}, gpu_model={hw.gpu_model}, "
                    f"gpu_archi={hw.gpu_archi}); none of the free ones fits"
                )
            chosen = sorted(fitting, key=lambda g: g.memory_mb)[
                :1
            ]  # smallest that fits, one per job
            alloc = Allocation(job_id, need_cpu, need_mem, chosen)
            self.held[job_id] = alloc
            return alloc

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
