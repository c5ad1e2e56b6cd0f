"""The loop keeps the GPU busy: a job's share is free the moment its container ends (its upload
goes on beside the next job), and with STAGE_AHEAD the next job is claimed behind the running one
and gets its share at once. Fakes only: no HTTP, no Docker."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from fetcher.cancel import Cancel
from fetcher.gpu.nvml import Gpu
from fetcher.host import Host
from fetcher.pool import ResourcePool
from fetcher.worker import JobStart, LoopOptions, Worker
from tests.helpers import wait_for
from tests.unit.test_worker import FakeSource, run_in_thread, spec

GPU = Gpu(0, "GPU-0", "NVIDIA A100", 40960, "ampere")


class Steps:
    """Each job: its container runs until `exit[job]` is set, then it 'uploads' until `done[job]`
    is set. Records what happened, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.exit: dict[str, threading.Event] = {}
        self.done: dict[str, threading.Event] = {}
        self.cancels: dict[str, Cancel] = {}
        self.starts: dict[str, JobStart] = {}
        self._lock = threading.Lock()
        self._open = False

    def gate(self, table: dict[str, threading.Event], job_id: str) -> threading.Event:
        with self._lock:
            event = table.setdefault(job_id, threading.Event())
            if self._open:
                event.set()
            return event

    def open_all(self) -> None:
        """Every container ends and every upload ends, now and from now on."""
        with self._lock:
            self._open = True
            for event in (*self.exit.values(), *self.done.values()):
                event.set()

    def note(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def __call__(self, job: JobStart, cancel: Cancel) -> None:
        self.cancels[job.job_id], self.starts[job.job_id] = cancel, job
        woken = threading.Event()
        cancel.subscribe(woken)
        job.alloc.listen(woken)
        woken.wait(10)
        if cancel.is_set() and not job.alloc.ready.is_set():
            self.note(f"{job.job_id} handed back unstarted")
            return
        self.note(f"{job.job_id} started")
        self.gate(self.exit, job.job_id).wait(10)
        self.note(f"{job.job_id} exited")
        job.ended()
        self.gate(self.done, job.job_id).wait(10)
        self.note(f"{job.job_id} reported")


@pytest.fixture
def steps() -> Iterator[Steps]:
    s = Steps()
    yield s
    s.open_all()


def worker(source: FakeSource, steps: Steps, *, stage_ahead: bool = False) -> Worker:
    pool = ResourcePool(Host(8, 8000, (GPU,)), 1, 1, 100, stage_ahead=stage_ahead)
    return Worker(source, pool, steps, LoopOptions(poll_interval_s=30))


def test_the_next_job_starts_while_the_previous_one_still_uploads(steps: Steps) -> None:
    # Given one GPU slot and two jobs in the queue
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = worker(source, steps)
    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: "1 started" in steps.events, 5, "job 1")
        # When job 1's container ends (its upload not yet done)
        steps.gate(steps.exit, "1").set()
        # Then job 2 is claimed at once (not at the next poll, 30 s away) and starts on the GPU
        wait_for(lambda: "2 started" in steps.events, 5, "job 2 to start")
        assert "1 reported" not in steps.events
        assert steps.starts["2"].alloc.gpus == [GPU]
    finally:
        w.request_stop()
        steps.open_all()
        t.join(10)


def test_uploads_are_bounded_to_one_per_slot(steps: Steps) -> None:
    # Given job 1 uploading and job 2 ended too, still uploading
    source = FakeSource([{"1": spec()}, {"2": spec()}, {"3": spec()}])
    w = worker(source, steps)
    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: "1 started" in steps.events, 5, "job 1")
        steps.gate(steps.exit, "1").set()
        wait_for(lambda: "2 started" in steps.events, 5, "job 2")
        claims = len(source.offers)
        steps.gate(steps.exit, "2").set()
        wait_for(lambda: "2 exited" in steps.events, 5, "job 2 to exit")
        # Then with one slot and one upload already going, no third job is claimed meanwhile
        assert not wait_quietly(lambda: "3 started" in steps.events, 0.5)
        assert len(source.offers) == claims
        # When job 1's upload ends, the third is claimed
        steps.gate(steps.done, "1").set()
        wait_for(lambda: "3 started" in steps.events, 5, "job 3")
    finally:
        w.request_stop()
        steps.open_all()
        t.join(10)


def test_stage_ahead_claims_behind_the_running_job_and_starts_the_moment_it_ends(
    steps: Steps,
) -> None:
    # Given STAGE_AHEAD, one GPU slot busy with job 1
    source = FakeSource([{"1": spec(gpu_mem=1, cpu_cores=2, memory=1000)}, {"2": spec(gpu_mem=1)}])
    w = worker(source, steps, stage_ahead=True)
    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: "1 started" in steps.events, 5, "job 1")
        # Then a second claim offers job 1's share and GPU, and job 2 is staged behind it
        wait_for(lambda: "2" in steps.starts, 5, "job 2 to be staged")
        ahead = source.offers[1]
        assert (ahead.cpu_cores, ahead.memory, ahead.gpu_mem) == (2, 1000, 40960)
        assert steps.starts["2"].alloc.behind == "1" and "2 started" not in steps.events
        # and nothing more is claimed: one staged job per GPU
        assert not wait_quietly(lambda: len(source.offers) > 2, 0.3)
        # When job 1's container ends, job 2 starts on its GPU
        steps.gate(steps.exit, "1").set()
        wait_for(lambda: "2 started" in steps.events, 5, "job 2 to start")
        assert steps.events.index("1 exited") < steps.events.index("2 started")
        assert "1 reported" not in steps.events
    finally:
        w.request_stop()
        steps.open_all()
        t.join(10)


def test_a_stop_hands_a_staged_job_back_unstarted_and_lets_the_running_one_finish(
    steps: Steps,
) -> None:
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = worker(source, steps, stage_ahead=True)
    t, out = run_in_thread(w)
    wait_for(lambda: "2" in steps.starts, 5, "job 2 to be staged")
    # When the worker is asked to stop (first signal: drain)
    w.request_stop()
    # Then the staged job is cancelled at once, the running one is not
    wait_for(lambda: "2 handed back unstarted" in steps.events, 5, "the staged job to go")
    assert steps.cancels["2"].shutdown and not steps.cancels["1"].is_set()
    steps.gate(steps.exit, "1").set()
    steps.gate(steps.done, "1").set()
    t.join(10)
    assert out == {"rc": 0} and "1 reported" in steps.events


def wait_quietly(predicate: object, seconds: float) -> bool:
    """Whether `predicate` becomes true within `seconds` (False is the expected answer)."""
    try:
        wait_for(predicate, seconds, "")  # type: ignore[arg-type]
    except AssertionError:
        return False
    return True
