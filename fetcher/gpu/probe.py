"""`fetcher gpu probe` (scripts/gpu-probe): the first thing an admin runs on a GPU box. What NVML
shows (driver, CUDA, every GPU and MIG instance), each device's health signals and processes, the
device request a job on it would get, and whether it would be offered now and why not; and the
offer view of `fetcher info`. Reads only; needs no API settings."""

from __future__ import annotations

import json
from typing import Any

from fetcher.engine.container import gpu_device_request
from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Gpu, Nvml
from fetcher.host import Host
from fetcher.pool import ResourcePool
from fetcher.quarantine import Quarantine


def gpu_dict(gpu: Gpu) -> dict[str, Any]:
    return {
        "index": gpu.index,
        "uuid": gpu.uuid,
        "model": gpu.model,
        "memory_mb": gpu.memory_mb,
        "archi": gpu.archi,
        "mig_parent": gpu.parent,
        "compute_capability": gpu.compute,
    }


def probe(lib: Any = None, foreign_max_mb: int = 256) -> dict[str, Any]:
    """Everything the probe shows, as one JSON-ready object."""
    nvml = Nvml(lib)
    if not nvml.open():
        return {"nvml": f"not available: {nvml.why}", "devices": []}
    try:
        devices = nvml.devices()
        board = GpuBoard(nvml, devices, Quarantine(1, quiet=True), foreign_max_mb=foreign_max_mb)
        board.refresh(held=set())
        kept = {g.uuid: why for g, why in board.kept_out()}
        driver = nvml.driver()
        out: dict[str, Any] = {
            "nvml": "ok",
            "driver": driver.version,
            "cuda": driver.cuda_text(),
            "devices": [],
            "left_out": [{"index": i, "why": why} for i, why in nvml.left_out],
        }
        for gpu in devices:
            reading = board.reading(gpu.uuid)  # the refresh's look, that the offer was made from
            out["devices"].append(
                {
                    **gpu_dict(gpu),
                    "health": board.quarantine.why(gpu.uuid) or "ok",
                    "processes": [
                        {"pid": p.pid, "memory_mb": p.memory_mb}
                        for p in (reading.processes if reading else ())
                    ],
                    "memory_used_mb": None if reading is None else reading.memory_used_mb,
                    "utilization": None if reading is None else reading.utilization,
                    "offered": gpu.uuid not in kept,
                    "why_not": kept.get(gpu.uuid),
                    "device_request": dict(gpu_device_request([gpu.uuid])),
                }
            )
        return out
    finally:
        nvml.close()


def render(info: dict[str, Any]) -> str:
    if info["nvml"] != "ok":
        return (
            f"NVML {info['nvml']}\n(no NVIDIA driver visible to this process; in a container,"
            " run it with --gpus all)"
        )
    lines = [f"NVIDIA driver {info['driver']}, supports CUDA {info['cuda']}"]
    for d in info["devices"]:
        kind = f"MIG instance of GPU {d['index']}" if d["mig_parent"] else f"GPU {d['index']}"
        lines.append(
            f"{kind}: {d['model']}, {d['memory_mb']} MB, {d['archi'] or '?'} (compute"
            f" {d['compute_capability'] or '?'}), {d['uuid']}"
        )
        lines.append(f"  health: {d['health']}")
        procs = ", ".join(f"pid {p['pid']} ({p['memory_mb']} MB)" for p in d["processes"])
        lines.append(f"  processes: {procs or 'none'}; memory used: {d['memory_used_mb']} MB")
        lines.append(f"  offered to jobs: {'yes' if d['offered'] else 'no: ' + d['why_not']}")
        lines.append(f"  a job on it gets: {json.dumps(d['device_request'])}")
    for gone in info.get("left_out", []):
        index = "?" if gone["index"] < 0 else gone["index"]
        lines.append(f"GPU {index}: left out, NVML cannot read it: {gone['why']}")
    if not info["devices"]:
        lines.append("no GPU: only CPU jobs would be claimed")
    return "\n".join(lines)


def offer_view(
    host: Host, pool: ResourcePool, board: GpuBoard | None, groups: list[str]
) -> dict[str, Any]:
    """`fetcher info`: what would be offered now; only free, healthy GPUs count, MIG instances
    are slots of their own, and the first claim names the GPU it is for."""
    if board is not None:
        board.refresh(held=set())
        offered = [g for g, _ in board.offerable(held=set())]
        kept = [{"uuid": g.uuid, "why": why} for g, why in board.kept_out()]
    else:
        offered, kept = list(host.gpus), []
    found = None if host.gpus and not offered else pool.offer_for(groups)
    first = None
    if found is not None:
        offer, gpu = found
        first = {**offer.model_dump(), "for_gpu": None if gpu is None else gpu_dict(gpu)}
    return {
        "cpu_cores": host.cpu_cores,
        "memory_mb": host.memory_mb,
        "gpus": [gpu_dict(g) for g in offered],
        "parallel_jobs": min(pool.max_jobs, len(offered)) if host.gpus else pool.max_jobs,
        "first_claim": first,
        "kept_out": kept,
    }
