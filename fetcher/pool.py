"""The share each running job holds of what this box offers, and what is offered to the server.

A job holds its cores and memory (what it states, else one slot's share) and one GPU (the
smallest free one that fits) until its thread releases them; what is left is the next claim's
offer. A job that does not fit what is free gets a NoFit with the reason (it is handed back).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Gpu
from fetcher.host import Host
from fetcher.models import ClaimOffer, HardwareSpecs
from fetcher.quarantine import BOX
from fetcher.settings import Settings


@dataclass(frozen=True)
class NoFit:
    """Why a job does not fit what is free now."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def fits(gpu: Gpu, memory_mb: int, hw: HardwareSpecs) -> bool:
    """The job's GPU requirements (memory, model, architecture; null asks for nothing) hold for
    `gpu`, which has `memory_mb` for it."""
    return (
        (hw.gpu_mem or 0) <= memory_mb
        and hw.gpu_model in (None, gpu.model)
        and hw.gpu_archi in (None, gpu.archi)
    )


@dataclass
class Allocation:
    job_id: str
    cpu_cores: int
    memory_mb: int
    gpus: list[Gpu] = field(default_factory=list)
    behind: str | None = None  # staged ahead: the job whose share it takes when that one ends
    ready: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    refused: str | None = None  # staged: why it will not get the share after all
    # when it was made, right after the claim (monotonic): a staged job's bound counts from it
    made_at: float = field(default_factory=time.monotonic, compare=False, repr=False)
    _listeners: list[threading.Event] = field(default_factory=list, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.behind is None:
            self.ready.set()

    def listen(self, event: threading.Event) -> None:
        """Also set `event` when the share becomes the job's, or is refused (at once if it is)."""
        with self._lock:
            self._listeners.append(event)
            now = self.ready.is_set() or self.refused is not None
        if now:
            event.set()

    def activate(self) -> None:
        """The share is the job's now."""
        with self._lock:
            self.ready.set()
            listeners = list(self._listeners)
        for event in listeners:
            event.set()

    def refuse(self, why: str) -> None:
        """A staged job will not get the share (its GPU was quarantined while it waited)."""
        with self._lock:
            self.refused = why
            listeners = list(self._listeners)
        for event in listeners:
            event.set()


@dataclass(frozen=True)
class PoolSnapshot:
    """What is held and what is free, at one moment (for metrics and `fetcher status`)."""

    slots: int
    busy: int
    free_cpu_cores: int
    free_memory_mb: int
    gpus: list[str]  # "index:model:uuid" of every GPU this fetcher uses
    free_gpus: list[str]
    staged: int = 0


class ResourcePool:
    """Slots and shares: each running job holds its cores, memory and GPU until released. With
    STAGE_AHEAD, a job may be claimed behind a running one (`offer_ahead`, `allocate_behind`): it
    takes that job's share, GPU included, the moment that job releases it."""

    def __init__(
        self,
        host: Host,
        max_jobs: int | None,
        default_cpu: int | None = None,
        default_memory_mb: int | None = None,
        *,
        board: GpuBoard | None = None,
        stage_ahead: bool = False,
    ) -> None:
        self.host = host
        self.board = board
        self.stage_ahead = stage_ahead
        self.max_jobs = max_jobs or max(1, len(host.gpus))
        # a job that states no cpu_cores / memory (the user-facing API's default) gets one slot's
        # share of the box: all of it on a one-GPU box, as the upstream fetcher gave; its container
        # is held to that share, and that share is what is counted (nothing is promised twice)
        self.default_cpu = default_cpu or max(1, host.cpu_cores // self.max_jobs)
        self.default_memory_mb = default_memory_mb or max(1, host.memory_mb // self.max_jobs)
        self.held: dict[str, Allocation] = {}
        self.behind: dict[str, Allocation] = {}  # a running job's id -> the job staged behind it
        self.waiting: list[Allocation] = []  # staged jobs whose job ended, until the share is free
        self.no_stage: set[str] = set()  # running jobs a staged job waited behind in vain
        self.stopping = False  # the worker stops: no job is staged any more (withdraw_unstarted)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, host: Host, settings: Settings, board: GpuBoard | None = None
    ) -> ResourcePool:
        return cls(
            host,
            settings.max_parallel_jobs,
            settings.job_default_cpu_cores,
            settings.job_default_memory_mb,
            board=board,
            stage_ahead=settings.stage_ahead,
        )

    def _free(self, *, for_waiting: bool = False) -> tuple[int, int, list[tuple[Gpu, int]]]:
        """Free cores, memory, and the GPUs that may be given now with the memory each offers.
        The share a staged job waits for is promised to it: kept from every new claim (its job
        released it a moment ago, or another still holds its GPU); `for_waiting`: what the
        waiting jobs themselves may take."""
        shares = list(self.held.values())
        if not for_waiting:
            shares += self.waiting
        cpu = self.host.cpu_cores - sum(a.cpu_cores for a in shares)
        mem = self.host.memory_mb - sum(a.memory_mb for a in shares)
        used = {g.uuid for a in shares for g in a.gpus}
        if self.board is not None:
            return cpu, mem, self.board.offerable(used)
        return cpu, mem, [(g, g.memory_mb) for g in self.host.gpus if g.uuid not in used]

    def offer(self, groups: list[str]) -> ClaimOffer | None:
        """What to ask the server for now; None when no slot is free."""
        found = self.offer_for(groups)
        return None if found is None else found[0]

    def _slots_full(self) -> bool:
        """No slot for a new claim: each is held by a job, or promised to a staged one whose job
        ended and that waits for the share (see `_free`)."""
        return len(self.held) + len(self.waiting) >= self.max_jobs

    def offer_for(self, groups: list[str]) -> tuple[ClaimOffer, Gpu | None] | None:
        """The offer, and the GPU it is for (the free one with the most memory)."""
        with self._lock:
            if self._slots_full():
                return None
            cpu, mem, gpus = self._free()
            if cpu < 1 or mem < 1:
                return None
            best = max(gpus, key=lambda gm: gm[1], default=None)
            return _offer(groups, cpu, mem, best), None if best is None else best[0]

    def offer_ahead(self, groups: list[str]) -> tuple[ClaimOffer, str] | None:
        """STAGE_AHEAD: an offer for a job to stage behind a running one (the oldest that has
        none yet): that job's share, GPU included; and the id of the job it is behind. Not behind
        a job whose GPU is quarantined or shared (two jobs adopted on one GPU after a restart),
        nor behind one a staged job already waited for in vain (no churn through the queue)."""
        if not self.stage_ahead:
            return None
        with self._lock:
            if self.waiting or self._quarantined(None) is not None:
                return None
            holders: dict[str, int] = {}
            for alloc in self.held.values():
                for g in alloc.gpus:
                    holders[g.uuid] = holders.get(g.uuid, 0) + 1
            for job_id, alloc in self.held.items():
                if (
                    job_id in self.behind
                    or job_id in self.no_stage
                    or not alloc.ready.is_set()
                    or not _is_job(job_id)
                ):
                    continue
                gpu = alloc.gpus[0] if alloc.gpus else None
                if gpu is not None and (holders[gpu.uuid] > 1 or self._quarantined(gpu)):
                    continue
                best = None if gpu is None else (gpu, gpu.memory_mb)
                return _offer(groups, alloc.cpu_cores, alloc.memory_mb, best), job_id
        return None

    def _quarantined(self, gpu: Gpu | None) -> str | None:
        """Why `gpu` (None: the box) is kept from jobs: its own quarantine or the box's."""
        if self.board is None:
            return None
        q = self.board.quarantine
        return (gpu is not None and q.why(gpu.uuid)) or q.why(BOX)

    def allocate(self, job_id: str, hw: HardwareSpecs) -> Allocation | NoFit:
        """Reserve the job's share: the cores and memory it states (else one slot's), and the
        smallest free GPU that fits it (one per job, if it needs one)."""
        with self._lock:
            return self._allocate(job_id, hw)

    def _allocate(self, job_id: str, hw: HardwareSpecs) -> Allocation | NoFit:
        cpu, mem, gpus = self._free()
        need_cpu = hw.cpu_cores or self.default_cpu
        need_mem = hw.memory or self.default_memory_mb
        if self._slots_full():
            return NoFit(f"no free slot ({self.max_jobs} jobs running)")
        if need_cpu > cpu:
            return NoFit(f"needs {need_cpu} CPU cores, {cpu} free")
        if need_mem > mem:
            return NoFit(f"needs {need_mem} MB memory, {mem} MB free")
        fitting = sorted((g for g, m in gpus if fits(g, m, hw)), key=lambda g: g.memory_mb)
        if hw.needs_gpu and not fitting:
            return NoFit(self._no_gpu_for(hw))
        alloc = Allocation(job_id, need_cpu, need_mem, fitting[:1])
        self.held[job_id] = alloc
        return alloc

    def allocate_behind(self, job_id: str, hw: HardwareSpecs, ahead: str) -> Allocation | NoFit:
        """Reserve, behind the running job `ahead`, the part of its share this job needs; the
        allocation is `ready` once that share is free (see `release`). If `ahead` ended while
        the claim was under way, the job gets what is free now, as any claim. Refused once the
        worker stops: a stop that lands while the claim is under way must not let the job start
        in the drain (`withdraw_unstarted` has already taken every staged job out)."""
        with self._lock:
            if self.stopping:
                return NoFit("the worker is stopping; no job is staged any more")
            front = self.held.get(ahead)
            if front is None:
                return self._allocate(job_id, hw)
            if ahead in self.behind:
                return NoFit(f"job {ahead}, which it was claimed behind, has a job staged already")
            need_cpu = hw.cpu_cores or self.default_cpu
            need_mem = hw.memory or self.default_memory_mb
            gpu = front.gpus[0] if front.gpus else None
            if need_cpu > front.cpu_cores or need_mem > front.memory_mb:
                return NoFit(
                    f"needs {need_cpu} CPU cores and {need_mem} MB; the share it would take has"
                    f" {front.cpu_cores} and {front.memory_mb} MB"
                )
            if hw.needs_gpu and (gpu is None or not fits(gpu, gpu.memory_mb, hw)):
                return NoFit(self._no_gpu_for(hw))
            alloc = Allocation(job_id, need_cpu, need_mem, [gpu] if gpu else [], behind=ahead)
            self.behind[ahead] = alloc
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
            staged = self._staged_count()

        def name(g: Gpu) -> str:
            return f"{g.index}:{g.model}:{g.uuid}"

        return PoolSnapshot(
            self.max_jobs,
            held,
            cpu,
            mem,
            [name(g) for g in self.host.gpus],
            [name(g) for g, _ in free],
            staged,
        )

    def held_gpus(self) -> dict[str, str]:
        """GPU UUID -> the key (job id) of the share that holds it."""
        with self._lock:
            return {g.uuid: key for key, a in self.held.items() for g in a.gpus}

    def release(self, job_id: str) -> list[str]:
        """The job gives its share back (its container has ended). A job staged behind it takes
        the share once it is free (another job adopted on the same GPU may still hold it); the
        ids of the staged jobs that start now are returned."""
        with self._lock:
            self.held.pop(job_id, None)
            self.no_stage.discard(job_id)
            waiting = self.behind.pop(job_id, None)
            if waiting is not None:
                self.waiting.append(waiting)
        return self.start_waiting()

    def start_waiting(self) -> list[str]:
        """Give each staged job whose share is free now that share (checked again, as for a
        claim: a slot, its cores and memory, its GPU unheld, not quarantined, not busy with
        others); refuse it the share if its GPU or the box was quarantined while it waited."""
        started: list[Allocation] = []
        refused: list[tuple[Allocation, str]] = []
        with self._lock:
            for alloc in list(self.waiting):
                gpu = alloc.gpus[0] if alloc.gpus else None
                why = self._quarantined(gpu)
                if why is not None:
                    self.waiting.remove(alloc)
                    refused.append((alloc, why))
                elif self._free_for(alloc):
                    self.waiting.remove(alloc)
                    self.held[alloc.job_id] = alloc
                    started.append(alloc)
        for alloc in started:
            alloc.activate()
        for alloc, why in refused:
            alloc.refuse(f"quarantined while it waited: {why}")
        return [a.job_id for a in started]

    def _free_for(self, alloc: Allocation) -> bool:
        if len(self.held) >= self.max_jobs:
            return False
        cpu, mem, gpus = self._free(for_waiting=True)
        if alloc.cpu_cores > cpu or alloc.memory_mb > mem:
            return False
        return all(any(g.uuid == f.uuid for f, _m in gpus) for g in alloc.gpus)

    def withdraw(self, job_id: str) -> None:
        """A job ends: the place it was staged in (if it never got its share), or the share it
        took. A job staged behind a running one that never got its share (its bound passed, it
        failed, the worker stops) keeps any other from being staged behind that job."""
        with self._lock:
            for ahead, alloc in list(self.behind.items()):
                if alloc.job_id == job_id:
                    del self.behind[ahead]
                    self.no_stage.add(ahead)
            self.waiting = [a for a in self.waiting if a.job_id != job_id]
            self.held.pop(job_id, None)
        self.start_waiting()

    def withdraw_unstarted(self) -> list[str]:
        """The worker stops: every staged job that has not got its share gives up its place at
        once (none of them can get it after this, and no job is staged after this); their ids."""
        with self._lock:
            self.stopping = True
            gone = [a.job_id for a in (*self.behind.values(), *self.waiting)]
            self.behind.clear()
            self.waiting.clear()
        return gone

    def withdrawn_by_stop(self, alloc: Allocation) -> bool:
        """`alloc` is a staged job's place that the worker's stop took (`withdraw_unstarted`)
        before it got its share: it never will. False for a job that got its share before the
        stop (the drain lets it run) and while the stop has not reached the pool yet."""
        with self._lock:
            return self.stopping and alloc.behind is not None and not alloc.ready.is_set()

    def rename(self, job_id: str, key: str) -> bool:
        """Keep a job's share held under another key (the job ended, its container did not): a
        job staged behind it waits until that container is gone. False when the job held no
        share any more (its container had ended: it gave it back then)."""
        with self._lock:
            alloc = self.held.pop(job_id, None)
            if alloc is not None:
                self.held[key] = alloc
            if job_id in self.behind:
                self.behind[key] = self.behind.pop(job_id)
        return alloc is not None

    @property
    def staged(self) -> int:
        """Staged jobs that have not got their share yet (each still needs room for its inputs:
        `source.ApiJobSource._room_to_stage`)."""
        with self._lock:
            return self._staged_count()

    def _staged_count(self) -> int:
        return len(self.behind) + len(self.waiting)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self.held)


def _is_job(key: str) -> bool:
    """A share held by a job (not by a container that outlived its job, see fetcher.leftovers)."""
    return not key.startswith("job ")


def _offer(groups: list[str], cpu: int, mem: int, gpu: tuple[Gpu, int] | None) -> ClaimOffer:
    return ClaimOffer(
        memory=mem,
        cpu_cores=cpu,
        groups=groups,
        gpu_mem=gpu[1] if gpu else 0,
        gpu_model=gpu[0].model if gpu else None,
        gpu_archi=gpu[0].archi if gpu else None,
    )
