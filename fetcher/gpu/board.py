"""GpuBoard: each GPU's state in one place, read by the offer (`fetcher.pool`), `fetcher status`,
`fetcher info` and the metrics.

A GPU (or MIG instance) is offered only when it is
- healthy: no health signal at the last look (see `Nvml.health`) and no critical Xid event
  since the start (Xids the NVIDIA device plugin also ignores, application errors such as 13 or
  31, are only logged: GPU_XID_IGNORED);
- not quarantined (`fetcher.quarantine`);
- free: not given to one of our jobs, and no process of someone else on it, or one using at most
  GPU_FOREIGN_MEMORY_MAX_MB (a notebook on a shared lab box takes the GPU out of the offer; a
  monitoring tool's small context does not). Processes on a GPU our job holds are the job's.
What the claim offers for it is what it really has: its memory less what others use of it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from fetcher.gpu import cuda
from fetcher.gpu.nvml import Driver, Gpu, Nvml, Reading, XidEvent
from fetcher.gpu.usage import UsageTracker
from fetcher.quarantine import Quarantine

log = logging.getLogger(__name__)

DEFAULT_XID_IGNORED = (13, 31, 43, 45, 68, 109)


@dataclass(frozen=True)
class GpuView:
    """One GPU as `fetcher status` and the metrics show it."""

    uuid: str
    index: int
    model: str
    memory_mb: int
    parent: str | None
    state: str  # free, in use, busy with others, quarantined
    why: str | None = None
    job_id: str | None = None
    memory_used_mb: int | None = None
    utilization: int | None = None
    power_w: float | None = None

    @property
    def healthy(self) -> bool:
        return self.state != "quarantined"


@dataclass
class _Seen:
    reading: Reading | None = None
    others_mb: int = 0
    other_procs: int = 0


@dataclass
class GpuBoard:
    nvml: Nvml | None
    gpus: list[Gpu]
    quarantine: Quarantine
    foreign_max_mb: int = 256
    xid_ignored: tuple[int, ...] = DEFAULT_XID_IGNORED
    usage: UsageTracker = field(default_factory=UsageTracker)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _driver: Driver | None = None

    # --- reading NVML ----------------------------------------------------------------------
    def refresh(self, held: set[str]) -> None:
        """One look at every GPU (each pass of the loop): health, and the use of those not
        held by our jobs. A GPU with a health signal is quarantined at once."""
        if self.nvml is None or not self.nvml.ok:
            return
        for gpu in self.gpus:
            self._look_at_health(gpu)
            reading = self.nvml.reading(gpu)
            seen = _Seen(reading)
            if reading is not None and gpu.uuid not in held:
                seen.other_procs = len(reading.processes)
                seen.others_mb = reading.processes_mb
            with self._lock:
                self._seen[gpu.uuid] = seen

    def check_health(self) -> None:
        """Quarantine each GPU with a health signal now (without reading its use)."""
        if self.nvml is None or not self.nvml.ok:
            return
        for gpu in self.gpus:
            self._look_at_health(gpu)

    def _look_at_health(self, gpu: Gpu) -> str | None:
        """The GPU's health signal now (quarantining it), or None when healthy."""
        assert self.nvml is not None
        problem = self.nvml.health(gpu)
        if problem is not None:
            self.quarantine.put(gpu.uuid, problem)
        return problem

    def trouble(self, uuids: list[str]) -> str | None:
        """Whether the GPUs a job was given are in trouble now (quarantined while it ran, by an
        Xid or at a pass, or showing a health signal at this fresh look, which quarantines
        them): the first one's, in words (`gpu 1: ...`); None when all are healthy. A job that
        failed on such a GPU failed for the box's trouble, not its own."""
        for gpu in self.gpus:
            if gpu.uuid not in uuids:
                continue
            why = self.quarantine.why(gpu.uuid)
            if why is None and self.nvml is not None and self.nvml.ok:
                why = self._look_at_health(gpu)
            if why is not None:
                name = f"{gpu.index}" if gpu.parent is None else f"{gpu.index} ({gpu.uuid})"
                return f"gpu {name}: {why}"
        return None

    def reading(self, uuid: str) -> Reading | None:
        """The last refresh's look at the device `uuid`; None before one or where NVML said nothing."""
        with self._lock:
            seen = self._seen.get(uuid)
        return None if seen is None else seen.reading

    def on_event(self, event: XidEvent) -> None:
        """A critical event from NVML's event set (the watch thread)."""
        if event.kind == "xid" and event.xid in self.xid_ignored:
            log.warning(
                "gpu %s: Xid %d (an application error, ignored: GPU_XID_IGNORED)",
                ",".join(event.uuids),
                event.xid,
            )
            return
        what = "a double-bit ECC error" if event.kind == "ecc" else f"critical Xid {event.xid}"
        if not event.uuids:
            log.warning(
                "gpu: %s reported by NVML on a MIG instance this fetcher does not use", what
            )
        for uuid in event.uuids:
            self.quarantine.put(uuid, f"{what} reported by NVML")

    @property
    def driver(self) -> Driver | None:
        if self._driver is None and self.nvml is not None and self.nvml.ok:
            self._driver = self.nvml.driver()
        return self._driver

    # --- what may be offered -------------------------------------------------------------------
    def _kept_out_why(self, gpu: Gpu) -> str | None:
        why = self.quarantine.why(gpu.uuid)
        if why is not None:
            return f"quarantined: {why}"
        with self._lock:
            seen = self._seen.get(gpu.uuid)
        if seen is not None and seen.other_procs and seen.others_mb > self.foreign_max_mb:
            return (
                f"busy with others: {seen.other_procs} process(es) not ours use"
                f" {seen.others_mb} MB (GPU_FOREIGN_MEMORY_MAX_MB={self.foreign_max_mb})"
            )
        return None

    def offerable(self, held: set[str]) -> list[tuple[Gpu, int]]:
        """The GPUs a job may be given now, with the memory each really has (MB)."""
        found = []
        for gpu in self.gpus:
            if gpu.uuid in held or self._kept_out_why(gpu) is not None:
                continue
            with self._lock:
                seen = self._seen.get(gpu.uuid)
            others = seen.others_mb if seen is not None and seen.other_procs else 0
            found.append((gpu, max(gpu.memory_mb - others, 0)))
        return found

    def kept_out(self) -> list[tuple[Gpu, str]]:
        """The GPUs no job is given now (quarantined, busy with others), and why."""
        return [(g, why) for g in self.gpus if (why := self._kept_out_why(g)) is not None]

    def none_healthy(self) -> str | None:
        """Why the box claims nothing: it has GPUs and every one of them is quarantined."""
        if not self.gpus:
            return None
        reasons = [self.quarantine.why(g.uuid) for g in self.gpus]
        if all(reasons):
            return f"no healthy GPU left ({len(self.gpus)} quarantined: see `fetcher status`)"
        return None

    # --- CUDA requirements -------------------------------------------------------------------
    def cuda_unmet(
        self, image_env: list[str], job_env: dict[str, str], uuids: list[str]
    ) -> str | None:
        """Why this box's driver cannot run the image's CUDA (its NVIDIA_REQUIRE_* constraints),
        in one line; None when it can, or cannot be told."""
        driver = self.driver
        if driver is None or not uuids:
            return None
        try:
            needs = cuda.requirements_from_env(image_env, job_env)
        except cuda.MalformedRequirement as exc:
            log.warning("gpu: the image's CUDA requirement cannot be read (%s); not checked", exc)
            return None
        chosen = [g for g in self.gpus if g.uuid in uuids]
        facts = cuda.DriverFacts(
            cuda_version=driver.cuda,
            driver_version=None if driver.version == "unknown" else driver.version,
            gpus=tuple(
                cuda.GpuFacts(
                    g.uuid, None if g.brand is None else cuda.brand_from_nvml(g.brand), g.compute
                )
                for g in chosen
            ),
        )
        return cuda.unmet(needs, facts, [g.uuid for g in chosen])

    # --- what is shown ---------------------------------------------------------------------
    def views(self, jobs: dict[str, str]) -> list[GpuView]:
        """Every GPU's state; `jobs`: GPU UUID -> the id of our job on it."""
        out = []
        for gpu in self.gpus:
            why = self._kept_out_why(gpu)
            with self._lock:
                seen = self._seen.get(gpu.uuid) or _Seen()
            job = jobs.get(gpu.uuid)
            state = (
                "quarantined"
                if why and why.startswith("quarantined")
                else "in use"
                if job
                else "busy with others"
                if why
                else "free"
            )
            r = seen.reading
            out.append(
                GpuView(
                    gpu.uuid,
                    gpu.index,
                    gpu.model,
                    gpu.memory_mb,
                    gpu.parent,
                    state,
                    why,
                    job,
                    None if r is None else r.memory_used_mb,
                    None if r is None else r.utilization,
                    None if r is None else r.power_w,
                )
            )
        return out
