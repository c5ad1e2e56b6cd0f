"""What this box offers: CPU and memory (as the engine sees them), GPUs (NVML), restricted by the
settings (GPUS, reserves) and, in a Slurm job, to the GPUs Slurm gave it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Gpu, Nvml
from fetcher.quarantine import BOX, Quarantine
from fetcher.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Host:
    cpu_cores: int
    memory_mb: int
    gpus: tuple[Gpu, ...] = ()


def open_nvml(lib: Any = None) -> Nvml:
    """NVML opened (`lib`: pynvml or a fake); `ok` False where there is no NVIDIA driver."""
    nvml = Nvml(lib)
    if not nvml.open():
        log.info("resources: no NVIDIA GPU visible (%s)", nvml.why)
    return nvml


def detect_gpus(lib: Any = None) -> list[Gpu]:
    """The GPUs (MIG instances as GPUs of their own) NVML shows this process, read once; [] where
    there is no NVIDIA driver."""
    nvml = open_nvml(lib)
    try:
        return nvml.devices() if nvml.ok else []
    finally:
        nvml.close()


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
        return [g for g in gpus if g.uuid in uuids or g.parent in uuids]
    if not indices:
        return []
    if len({g.index for g in gpus}) <= len(indices):  # MIG instances share their GPU's index
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
    chosen = set(settings.gpu_selection)
    if chosen:
        gpus = [g for g in gpus if chosen & {g.uuid, g.parent, str(g.index)}]
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


def detect_host_and_board(
    docker_info: dict[str, Any], settings: Settings, nvml: Nvml, quarantine: Quarantine
) -> tuple[Host, GpuBoard | None]:
    """The box (`detect_host`) with the GPUs `nvml` shows, and the board of those GPUs (None
    without any). A box whose GPUs NVML counts but can read none of is quarantined (`BOX`):
    run on as a CPU worker, it would claim the GPU jobs that ask for no GPU by name (DECODE's do
    not) and fail each as the job's own `error` (CUDA finds no device)."""
    devices = nvml.devices() if nvml.ok else []
    host = detect_host(docker_info, settings, devices)
    if nvml.left_out and not devices and slurm_gpu_selection(os.environ) != []:
        lost = "; ".join(f"gpu {i}: {why}" if i >= 0 else why for i, why in nvml.left_out)
        quarantine.put(
            BOX,
            f"NVML counts GPUs and can read none of them ({lost}); fix them and restart, or"
            " `fetcher gpu release box` to run jobs without a GPU",
        )
    if not host.gpus:
        return host, None
    board = GpuBoard(
        nvml,
        list(host.gpus),
        quarantine,
        settings.gpu_foreign_memory_max_mb,
        settings.xid_ignored,
    )
    return host, board
