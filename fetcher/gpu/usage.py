"""What a job did with its GPU(s): sampled while it runs (utilisation, memory, power), summed up
when its container has ended: mean utilisation and peak memory, in the job's report and log, the
metrics and `fetcher status`. A job that never touched its GPU is said to be so."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fetcher.gpu.nvml import Gpu, Reading


@dataclass
class DeviceUse:
    gpu: Gpu
    samples: int = 0
    util_sum: float = 0.0
    util_samples: int = 0
    peak_mb: int = 0
    power_sum_w: float = 0.0
    power_samples: int = 0
    processes_seen: bool = False

    def add(self, reading: Reading) -> None:
        self.samples += 1
        if reading.processes:
            self.processes_seen = True
        # the job's memory: its processes' (the GPU is the job's alone)
        self.peak_mb = max(self.peak_mb, reading.processes_mb)
        if reading.utilization is not None:
            self.util_sum += reading.utilization
            self.util_samples += 1
            self.processes_seen = self.processes_seen or reading.utilization > 0
        if reading.power_w is not None:
            self.power_sum_w += reading.power_w
            self.power_samples += 1

    @property
    def mean_util(self) -> float | None:
        return self.util_sum / self.util_samples if self.util_samples else None


@dataclass
class JobUse:
    job_id: str
    devices: list[DeviceUse] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return any(d.samples for d in self.devices)

    @property
    def never_used(self) -> bool:
        """Sampled, and no process of it ever showed on its GPUs, nor any utilisation."""
        return self.sampled and not any(d.processes_seen or d.peak_mb for d in self.devices)

    @property
    def peak_mb(self) -> int:
        return max((d.peak_mb for d in self.devices), default=0)

    @property
    def mean_util(self) -> float | None:
        means = [d.mean_util for d in self.devices if d.mean_util is not None]
        return sum(means) / len(means) if means else None

    @property
    def mean_util_ratio(self) -> float | None:
        util = self.mean_util
        return None if util is None else util / 100

    def summary(self) -> str:
        """One line: `gpu: mean 87 % util, peak 10.2 GiB of 80 GiB`."""
        if not self.sampled:
            return "gpu: no figures (the job ended before its GPU was sampled)"
        total = sum(d.gpu.memory_mb for d in self.devices)
        if self.never_used:
            return f"gpu: never used (no process on it, 0 % util, of {total / 1024:.0f} GiB)"
        util = self.mean_util
        util_text = "util unknown (MIG)" if util is None else f"mean {util:.0f} % util"
        return f"gpu: {util_text}, peak {self.peak_mb / 1024:.1f} GiB of {total / 1024:.0f} GiB"


class UsageTracker:
    """The running jobs' GPU use, by job id; thread-safe (sampled by the GPU watch thread)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobUse] = {}
        self._lock = threading.Lock()

    def start(self, job_id: str, gpus: list[Gpu]) -> None:
        with self._lock:
            self._jobs[job_id] = JobUse(job_id, [DeviceUse(g) for g in gpus])

    def tracked(self) -> list[Gpu]:
        with self._lock:
            return [d.gpu for use in self._jobs.values() for d in use.devices]

    def add(self, uuid: str, reading: Reading) -> None:
        with self._lock:
            for use in self._jobs.values():
                for d in use.devices:
                    if d.gpu.uuid == uuid:
                        d.add(reading)

    def finish(self, job_id: str) -> JobUse | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def current(self, job_id: str) -> JobUse | None:
        with self._lock:
            return self._jobs.get(job_id)
