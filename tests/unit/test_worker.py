"""The loop with fakes, no HTTP and no Docker: claiming while a slot is free, dispatching,
handing back what does not fit, refusing a queue id already running here, the stop signals, leaving
when idle (after EXIT_IDLE_POLLS empty polls in a row), leftover containers holding their share."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.cancel import Cancel
from fetcher.errors import ApiUnavailable, Interrupted, InvalidJobSpec
from fetcher.gpu.board import GpuBoard
from fetcher.gpu.nvml import Gpu
from fetcher.host import Host
from fetcher.leftovers import Leftover
from fetcher.models import ClaimOffer, ClaimResult, HandlerSpecs, HardwareSpecs, JobSpecs
from fetcher.pool import Allocation, NoFit, ResourcePool
from fetcher.quarantine import Quarantine
from fetcher.worker import Adoption, JobStart, LoopOptions, Worker
from tests.helpers import wait_for


def spec(**hw: int) -> JobSpecs:
    return JobSpecs(handler=HandlerSpecs(image_url="img"), hardware=HardwareSpecs(**hw))


class FakeSource:
    """A table-driven server: each claim pops the next answer (a dict of jobs or an exception)."""

    def __init__(self, answers: list[object], adopted: list[Adoption] | None = None) -> None:
        self.answers = answers
        self.adopted = adopted or []
        self.offers: list[ClaimOffer] = []
        self.handed_back: list[tuple[str, str]] = []
        self.rejected: list[str] = []
        self.accepted: list[str] = []
        self.housekeeping_calls = 0
        self.housekeeping_errors: list[Exception] = []
        self.before_claim: object = None  # called (if callable) before each answer

    def recover(self, stop: threading.Event) -> list[Adoption]:
        return self.adopted

    def claim(
        self, offer: ClaimOffer, stop: threading.Event, *, ahead: bool = False
    ) -> ClaimResult:
        self.offers.append(offer)
        if callable(self.before_claim):
            self.before_claim()
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, ClaimResult):
            return answer
        assert isinstance(answer, dict)
        return ClaimResult(jobs=answer)

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
        self.accepted.append(job_id)

    def reject(self, invalid: InvalidJobSpec) -> None:
        self.rejected.append(invalid.job_id)

    def hand_back(self, job_id: str, reason: str) -> None:
        self.handed_back.append((job_id, reason))

    def housekeeping(self, running: int) -> None:
        self.housekeeping_calls += 1
        if self.housekeeping_errors:
            raise self.housekeeping_errors.pop(0)

    def api_reachable(self) -> None:
        pass

    def stopping(self) -> None:
        pass


class Jobs:
    """Records executions; each job waits for `release` (or its cancel) before returning."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[tuple[str, str | None]] = []
        self.release = threading.Event()

    def __call__(self, job: JobStart, cancel: Cancel) -> None:
        job_id = job.job_id
        self.started.append(job_id)
        while not self.release.is_set():
            if cancel.event.wait(0.01):
                self.cancelled.append((job_id, cancel.reason))
                return


def worker(source: FakeSource, jobs: Jobs, slots: int = 1, **opts: object) -> Worker:
    pool = ResourcePool(Host(8, 8000, ()), slots, 1, 100)
    options = LoopOptions(poll_interval_s=0.01, **opts)  # type: ignore[arg-type]
    return Worker(source, pool, jobs, options)


def run_in_thread(w: Worker) -> tuple[threading.Thread, dict[str, int]]:
    out: dict[str, int] = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", w.run()), daemon=True)
    t.start()
    return t, out


def test_exit_when_idle_exits_0_once_no_job_is_available() -> None:
    jobs = Jobs()
    jobs.release.set()
    source = FakeSource([{"1": spec()}, {}])
    assert worker(source, jobs, exit_when_idle=True).run() == 0
    assert jobs.started == ["1"]


def test_max_jobs_stops_claiming_after_n() -> None:
    jobs = Jobs()
    jobs.release.set()
    source = FakeSource([{"1": spec()}, {"2": spec()}, {"3": spec()}])
    assert worker(source, jobs, max_jobs=2).run() == 0
    assert jobs.started == ["1", "2"]


def test_job_that_does_not_fit_is_handed_back_and_the_loop_goes_on() -> None:
    jobs = Jobs()
    jobs.release.set()
    source = FakeSource([{"big": spec(memory=99999)}, {"ok": spec()}, {}])
    assert worker(source, jobs, exit_when_idle=True).run() == 0
    assert source.handed_back[0][0] == "big" and "memory" in source.handed_back[0][1]
    assert jobs.started == ["ok"]


def test_invalid_claimed_jobs_are_rejected_and_not_idle() -> None:
    jobs = Jobs()
    jobs.release.set()
    bad = ClaimResult(invalid=[InvalidJobSpec("7", "handler.image_url", "Field required")])
    source = FakeSource([bad, {"8": spec()}, {}])
    assert worker(source, jobs, exit_when_idle=True).run() == 0
    assert source.rejected == ["7"] and jobs.started == ["8"]


def test_claims_only_while_a_slot_is_free_and_at_once_when_one_frees() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}, {"2": spec()}, {}])
    w = worker(source, jobs, slots=1, exit_when_idle=True)
    w.options.poll_interval_s = 30  # a freed slot must wake the loop, not the poll timer
    t, out = run_in_thread(w)
    time.sleep(0.3)
    assert jobs.started == ["1"] and len(source.offers) == 1
    jobs.release.set()
    t.join(5)
    assert out == {"rc": 0} and jobs.started == ["1", "2"]


def test_api_down_is_logged_once_per_state_change_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    jobs = Jobs()
    jobs.release.set()
    down = [ApiUnavailable("claim jobs: HTTP 503") for _ in range(6)]
    source = FakeSource([*down, {"1": spec()}, {}])
    w = worker(source, jobs, exit_when_idle=True, max_backoff_s=0.05)
    assert w.run() == 0
    errors = [r for r in caplog.records if "cannot claim" in r.getMessage()]
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(errors) == 1 and len(back) == 1
    assert jobs.started == ["1"]


def test_first_signal_drains_second_cancels_running_jobs() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}])
    w = worker(source, jobs)
    t, out = run_in_thread(w)
    deadline = time.monotonic() + 5
    while not jobs.started and time.monotonic() < deadline:
        time.sleep(0.01)
    w.handle_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert t.is_alive() and jobs.cancelled == [], "first signal lets the running job finish"
    claims = len(source.offers)
    w.handle_signal(signal.SIGTERM)
    t.join(5)
    assert out == {"rc": 0}
    assert jobs.cancelled == [("1", "worker shut down")]
    assert len(source.offers) == claims, "no claim after the first signal"


def test_first_signal_with_a_job_finishing_exits_0_without_cancel() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}])
    w = worker(source, jobs)
    t, out = run_in_thread(w)
    while not jobs.started:
        time.sleep(0.01)
    w.handle_signal(signal.SIGINT)
    jobs.release.set()
    t.join(5)
    assert out == {"rc": 0} and jobs.cancelled == []


def test_drain_timeout_forces_the_stop() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}])
    w = worker(source, jobs, drain_timeout_s=0.2)
    t, out = run_in_thread(w)
    while not jobs.started:
        time.sleep(0.01)
    w.request_stop()
    t.join(5)
    assert out == {"rc": 0} and jobs.cancelled == [("1", "worker shut down")]


def test_a_crashing_job_does_not_take_the_loop_down() -> None:
    def explode(job: JobStart, cancel: Cancel) -> None:
        raise RuntimeError("bug")

    source = FakeSource([{"1": spec()}, {"2": spec()}, {}])
    pool = ResourcePool(Host(8, 8000, ()), 1, 1, 100)
    w = Worker(source, pool, explode, LoopOptions(poll_interval_s=0.01, exit_when_idle=True))
    assert w.run() == 0
    assert pool.running == 0


def test_an_oserror_in_the_loop_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a disk that fails under the heartbeat, and a claim that raises an unmapped error
    jobs = Jobs()
    jobs.release.set()
    source = FakeSource([OSError(28, "No space left on device"), {"1": spec()}, {}])
    source.housekeeping_errors = [OSError(5, "Input/output error")]
    assert worker(source, jobs, exit_when_idle=True).run() == 0
    # Then both are logged, and the job after them still ran
    assert jobs.started == ["1"]
    text = caplog.text
    assert "No space left on device" in text and "Input/output error" in text


def test_a_second_claim_of_a_running_queue_id_is_refused() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}, {"1": spec()}, {}])
    w = worker(source, jobs, slots=2, exit_when_idle=True)
    t, out = run_in_thread(w)
    deadline = time.monotonic() + 5
    while len(source.offers) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.started == ["1"] and source.handed_back == [] and source.accepted == ["1"]
    jobs.release.set()
    t.join(5)
    assert out == {"rc": 0}


def test_an_invalid_spec_under_the_id_of_a_job_running_here_is_not_reported() -> None:
    """A claim answer naming a job that runs here again is refused whatever its spec: one that does
    not parse is not `reject`ed either, which would report `error` for the queue id of the job still
    running here (and, through the store, turn its row into a report the deliverer then deletes,
    losing the running job's durable record)."""
    jobs = Jobs()
    source = FakeSource(
        [
            {"1": spec()},
            ClaimResult(invalid=[InvalidJobSpec("1", "handler", "Field required")]),
        ]
    )
    w = worker(source, jobs, slots=2)
    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: jobs.started == ["1"] and not source.answers, 5, "both claims")
        assert source.rejected == [], "the job running here would get an error status"
    finally:
        jobs.release.set()
        w.request_stop()
        t.join(5)


def test_a_job_claimed_while_a_stop_arrives_is_handed_back_unstarted() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}])
    w = worker(source, jobs)
    source.before_claim = w.request_stop  # the signal arrives while the claim is on its way
    assert w.run() == 0
    assert jobs.started == [] and source.handed_back[0][0] == "1"
    assert "not started" in source.handed_back[0][1]


def test_an_interrupted_claim_ends_the_loop_promptly() -> None:
    jobs = Jobs()
    source = FakeSource([Interrupted("claim jobs: interrupted")])
    w = worker(source, jobs)
    w.request_stop()
    assert w.run() == 0 and jobs.started == []


def test_adopted_jobs_hold_their_share_and_run_first() -> None:
    jobs = Jobs()
    jobs.release.set()
    adopted = Adoption("5", spec(), 2, 500, [], container_id="container-abc")
    source = FakeSource([{}], adopted=[adopted])
    pool = ResourcePool(Host(8, 8000, ()), 1, 1, 100)
    seen: list[object] = []

    def execute(job: JobStart, cancel: Cancel) -> None:
        job_id, alloc, resume = job.job_id, job.alloc, job.resume
        seen.append((job_id, alloc.cpu_cores, alloc.memory_mb, resume))

    w = Worker(source, pool, execute, LoopOptions(poll_interval_s=0.01, exit_when_idle=True))
    assert w.run() == 0
    assert seen == [("5", 2, 500, "container-abc")]


def test_a_container_the_engine_would_not_remove_keeps_its_gpu_out_of_offers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container the engine would not remove (it may still run on its GPU) keeps that GPU out of
    every offer until it is gone. Here the same queue id, claimed anew (ids are reused), leaves a
    second such container: neither GPU is offered, and both come back once the engine removes
    them."""
    engine_fixed = threading.Event()
    removal_tries: list[str] = []
    ran: list[tuple[str, list[str]]] = []

    def execute(job: JobStart, cancel: Cancel) -> object:
        job_id, alloc = job.job_id, job.alloc
        ran.append((job_id, [g.uuid for g in alloc.gpus]))

        def leftover() -> bool:
            removal_tries.append(job_id)
            return engine_fixed.is_set()

        return Leftover(leftover)

    gpus = (Gpu(0, "GPU-0", "A100", 40000, "ampere"), Gpu(1, "GPU-1", "T4", 15000, "turing"))
    pool = ResourcePool(Host(8, 8000, gpus), 2, 1, 100)
    answers: list[object] = [{"1": spec(gpu_mem=1000)}]
    source = FakeSource(answers)
    w = Worker(source, pool, execute, LoopOptions(poll_interval_s=0.01, leftover_retry_s=0.05))  # type: ignore[arg-type]

    def claimed_anew() -> None:  # the same id again once its first run ended (not while it runs)
        if len(ran) == 1 and not w.running_jobs and len(source.offers) < 100:
            answers.append({"1": spec(gpu_mem=1000)})
            source.before_claim = None

    source.before_claim = claimed_anew
    t, out = run_in_thread(w)
    try:
        wait_until(lambda: len(ran) == 2 and len(removal_tries) >= 4)
        # the second run of id 1 was given the other GPU, and while both containers stay, nothing
        # is offered at all (both shares are held)
        assert sorted(g for _, used in ran for g in used) == ["GPU-0", "GPU-1"]
        offers_before = len(source.offers)
        time.sleep(0.2)
        assert len(source.offers) == offers_before
        assert pool.running == 2
        engine_fixed.set()
        wait_until(lambda: pool.running == 0 and len(source.offers) > offers_before)
        assert source.offers[-1].gpu_mem == 40000
    finally:
        w.request_stop()
        t.join(10)
    assert out["rc"] == 0


def wait_until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_exit_when_idle_is_not_held_for_ever_by_a_container_that_will_not_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    tries: list[int] = []

    def execute(job: JobStart, cancel: Cancel) -> object:

        def never_gone() -> bool:  # the engine never removes it
            tries.append(1)
            return False

        return Leftover(never_gone)

    pool = ResourcePool(Host(8, 8000, ()), 1, 1, 100)
    source = FakeSource([{"1": spec()}])
    w = Worker(
        source,
        pool,
        execute,  # type: ignore[arg-type]
        LoopOptions(poll_interval_s=0.01, exit_when_idle=True, leftover_retry_s=0.01),
    )
    t, out = run_in_thread(w)
    t.join(10)
    assert not t.is_alive(), "an --exit-when-idle worker waited for ever on a leftover container"
    assert out["rc"] == 0
    assert len(tries) == 3  # it tried a few times before it left


# --- --exit-when-idle leaves after EXIT_IDLE_POLLS empty polls in a row -----------------------
def test_exit_when_idle_waits_for_several_empty_claims_in_a_row() -> None:
    jobs = Jobs()
    jobs.release.set()
    source = FakeSource([{}, {}, {"1": spec()}, {}, {}, {}])
    assert worker(source, jobs, exit_when_idle=True, exit_idle_polls=3).run() == 0
    assert jobs.started == ["1"] and len(source.offers) == 6


def test_after_exit_when_idle_the_first_signal_still_only_drains() -> None:
    jobs = Jobs()
    source = FakeSource([{"1": spec()}, {}])
    w = worker(source, jobs, slots=2, exit_when_idle=True)
    t, out = run_in_thread(w)
    deadline = time.monotonic() + 5
    while w.claiming and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not w.claiming and t.is_alive()
    w.handle_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert jobs.cancelled == [], "an operator's first signal drains, it does not stop the job"
    jobs.release.set()
    t.join(5)
    assert out == {"rc": 0}


def test_paused_claims_count_as_idle_only_while_nothing_runs() -> None:
    # A box whose disk is full claims nothing. With nothing running, a pilot leaves after
    # EXIT_IDLE_POLLS such passes (it cannot work); a job found in between starts the count anew.
    jobs = Jobs()
    jobs.release.set()
    paused = ClaimResult(paused="10 MB free under PATH_BASE")
    source = FakeSource([paused, {"1": spec()}, paused, {}])
    assert worker(source, jobs, exit_when_idle=True, exit_idle_polls=2).run() == 0
    assert jobs.started == ["1"]
    assert len(source.offers) == 4
    # and a pilot with a full disk and nothing to do leaves
    source = FakeSource([paused, paused, {"2": spec()}])
    assert worker(source, Jobs(), exit_when_idle=True, exit_idle_polls=2).run() == 0
    assert len(source.offers) == 2


JOB = JobSpecs(handler=HandlerSpecs(image_url="img"), hardware=HardwareSpecs(cpu_cores=1))


class Answers:
    """The server as a script: each claim gets the next answer ({} = nothing available)."""

    def __init__(self, answers: list[dict[str, JobSpecs] | Exception]) -> None:
        self.answers = answers
        self.claims = 0

    def recover(self, stop: threading.Event) -> list[Adoption]:
        return []

    def accept(self, job_id: str, spec: JobSpecs, alloc: Allocation) -> None:
        pass

    def api_reachable(self) -> None:
        pass

    def claim(
        self, offer: ClaimOffer, stop: threading.Event, *, ahead: bool = False
    ) -> ClaimResult:
        self.claims += 1
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, Exception):
            raise answer
        return ClaimResult(jobs=answer)

    def reject(self, invalid: InvalidJobSpec) -> None:
        raise AssertionError("no invalid job in these tests")

    def hand_back(self, job_id: str, reason: str) -> None:
        raise AssertionError(f"job {job_id} handed back: {reason}")

    def stopping(self) -> None:
        pass

    def housekeeping(self, running: int) -> None:
        pass


def run_exit_when_idle(answers: Answers, polls: int) -> tuple[int, list[str]]:
    """Run the loop with --exit-when-idle and EXIT_IDLE_POLLS=`polls` to its end (failing the test
    if it has not ended within 10 s): its exit code, and the jobs it ran."""
    done: list[str] = []

    def execute(job: JobStart, cancel: Cancel) -> None:
        job_id = job.job_id
        done.append(job_id)

    options = LoopOptions(
        poll_interval_s=0.001, exit_when_idle=True, exit_idle_polls=polls, max_backoff_s=0.002
    )
    worker = Worker(answers, ResourcePool(Host(4, 4000), 1, 1, 100), execute, options)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the worker did not exit"
    return result[0], done


@pytest.mark.parametrize(
    ("polls", "answers", "claims", "done"),
    [
        # one empty answer is enough with EXIT_IDLE_POLLS=1 (the old behaviour)
        (1, [{}], 1, []),
        # the default: three empty answers in a row
        (3, [{}, {}, {}], 3, []),
        # a transient empty answer, then a job: the job runs, and the count starts again
        (3, [{}, {}, {"7": JOB}, {}, {}, {}], 6, ["7"]),
        (2, [{}, {"1": JOB}, {}, {"2": JOB}, {}, {}], 6, ["1", "2"]),
        # an API failure is no empty answer: it neither counts nor resets
        (2, [{}, ApiUnavailable("down"), {}], 3, []),
    ],
)
def test_exit_when_idle_waits_for_consecutive_empty_polls(
    polls: int, answers: list[dict[str, JobSpecs] | Exception], claims: int, done: list[str]
) -> None:
    # Given a server answering as scripted
    source = Answers(list(answers))
    # When the loop runs with --exit-when-idle and EXIT_IDLE_POLLS=polls
    rc, executed = run_exit_when_idle(source, polls)
    # Then it exits 0 after `polls` empty answers in a row, having run every job it got
    assert rc == 0
    assert source.claims == claims
    assert executed == done


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


def gpu_worker(source: FakeSource, steps: Steps, *, stage_ahead: bool = False) -> Worker:
    pool = ResourcePool(Host(8, 8000, (GPU,)), 1, 1, 100, stage_ahead=stage_ahead)
    return Worker(source, pool, steps, LoopOptions(poll_interval_s=30))


def test_the_next_job_starts_while_the_previous_one_still_uploads(steps: Steps) -> None:
    # Given one GPU slot and two jobs in the queue
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = gpu_worker(source, steps)
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


def test_no_claim_while_more_jobs_upload_than_there_are_slots(steps: Steps) -> None:
    # Given job 1 uploading and job 2 ended too, still uploading
    source = FakeSource([{"1": spec()}, {"2": spec()}, {"3": spec()}])
    w = gpu_worker(source, steps)
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
    w = gpu_worker(source, steps, stage_ahead=True)
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


def test_with_stage_ahead_a_slot_has_at_most_three_uploads_at_once(steps: Steps) -> None:
    # Given STAGE_AHEAD on one slot and a queue of jobs whose uploads do not end
    source = FakeSource([{str(n): spec(gpu_mem=1)} for n in range(1, 5)])
    pool = ResourcePool(Host(8, 8000, (GPU,)), 1, 1, 100, stage_ahead=True)
    w = Worker(source, pool, steps, LoopOptions(poll_interval_s=0.05))

    def uploading() -> int:
        with w._lock:
            return len(w._finishing)

    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: "2" in steps.starts, 5, "job 2 staged behind job 1")
        steps.gate(steps.exit, "1").set()
        wait_for(lambda: "2 started" in steps.events, 5, "job 2 to start")
        # job 3 is claimed beside one upload (the limit is one per slot, checked at each claim)
        wait_for(lambda: "3" in steps.starts, 5, "job 3 staged behind job 2")
        steps.gate(steps.exit, "2").set()
        # job 3 starts the moment the GPU is free, whatever uploads are under way
        wait_for(lambda: "3 started" in steps.events, 5, "job 3 to start")
        steps.gate(steps.exit, "3").set()
        wait_for(lambda: uploading() == 3, 5, "job 3 to upload")
        # Then three uploads run at once on the one slot (the documented bound), and no fourth
        # job is claimed while more than one of them goes on
        assert not wait_quietly(lambda: "4" in steps.starts, 0.3)
        steps.gate(steps.done, "1").set()
        assert not wait_quietly(lambda: "4" in steps.starts, 0.3)
        assert uploading() == 2
        steps.gate(steps.done, "2").set()
        wait_for(lambda: "4 started" in steps.events, 5, "job 4 once one upload is left")
    finally:
        w.request_stop()
        steps.open_all()
        t.join(10)


def test_a_stop_hands_a_staged_job_back_unstarted_and_lets_the_running_one_finish(
    steps: Steps,
) -> None:
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = gpu_worker(source, steps, stage_ahead=True)
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


def test_a_stop_while_a_staged_job_is_noted_hands_it_back_at_once(steps: Steps) -> None:
    # Given STAGE_AHEAD, job 1 running and job 2 claimed behind it
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = gpu_worker(source, steps, stage_ahead=True)
    accept = source.accept

    def accept_then_stop(job_id: str, spec_: JobSpecs, alloc: Allocation) -> None:
        accept(job_id, spec_, alloc)
        if job_id == "2":  # the first signal lands while job 2 is being noted (before _start)
            w.request_stop()

    source.accept = accept_then_stop  # type: ignore[method-assign,assignment]
    t, _ = run_in_thread(w)
    try:
        wait_for(lambda: "2" in steps.starts, 5, "job 2 to be staged")
        # Then the staged job is handed back unstarted at once (as when the stop comes later),
        # not after STAGE_AHEAD_MAX_WAIT_S
        assert wait_quietly(lambda: "2 handed back unstarted" in steps.events, 2), (
            f"job 2 not withdrawn by the stop: {steps.events}, cancel={steps.cancels['2'].reason}"
        )
        assert steps.cancels["2"].unstarted and not steps.cancels["1"].is_set()
    finally:
        steps.open_all()
        t.join(15)


def test_a_stop_during_a_staged_claim_hands_the_job_back_unstarted(steps: Steps) -> None:
    # Given STAGE_AHEAD, job 1 running, and the first signal landing while job 2's claim is
    # placed (after _dispatch checked the stop, before the pool takes it behind job 1)
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    w = gpu_worker(source, steps, stage_ahead=True)
    allocate_behind = w.pool.allocate_behind

    def stop_then_allocate(job_id: str, hw: HardwareSpecs, ahead: str) -> Allocation | NoFit:
        w.request_stop()
        return allocate_behind(job_id, hw, ahead)

    w.pool.allocate_behind = stop_then_allocate  # type: ignore[method-assign]
    t, out = run_in_thread(w)
    try:
        wait_for(lambda: w.stop_event.is_set(), 5, "the stop")
        # When job 1 ends during the drain
        steps.gate(steps.exit, "1").set()
        steps.gate(steps.done, "1").set()
        wait_for(lambda: "1 reported" in steps.events, 5, "job 1 to end")
        # Then job 2 does not start in the drain: it goes back unstarted
        assert not wait_quietly(lambda: "2 started" in steps.events, 0.5), steps.events
        assert source.handed_back == [("2", "the worker is stopping; the job was not started")]
        t.join(5)
        assert out == {"rc": 0}
    finally:
        steps.open_all()
        t.join(15)


def test_a_staged_job_that_gave_up_is_not_given_the_gpu_while_it_cleans_up() -> None:
    # Given STAGE_AHEAD on one GPU: job 1 running, job 2 staged behind it
    pool = ResourcePool(Host(8, 8000, (GPU,)), 1, 1, 100, stage_ahead=True)
    source = FakeSource([{"1": spec(gpu_mem=1)}, {"2": spec(gpu_mem=1)}])
    one_exits, gave_up, cleanup_done = threading.Event(), threading.Event(), threading.Event()

    def execute(job: JobStart, cancel: Cancel) -> Leftover | None:
        if job.alloc.behind is not None:  # staged: waits its (short) bound in vain
            job.alloc.ready.wait(0.05)
            job.gave_up()  # NotStarted: the pipeline gives up its place at once ...
            gave_up.set()
            cleanup_done.wait(10)  # ... then reports and removes its container and directory
            return None
        one_exits.wait(10)
        job.ended()  # job 1's container exits (it uploads on)
        cleanup_done.wait(10)
        return None

    w = Worker(source, pool, execute, LoopOptions(poll_interval_s=30))
    t, _ = run_in_thread(w)
    try:
        assert gave_up.wait(5)
        # When job 1 ends while job 2, already given up, is still cleaning up
        one_exits.set()
        wait_for(lambda: "1" not in pool.held_gpus().values(), 5, "job 1 to free the GPU")
        # Then the GPU is free for the next job, not given to job 2 (which would keep it idle)
        assert pool.held_gpus() == {}, pool.held_gpus()
        assert pool.snapshot().staged == 0
    finally:
        w.request_stop()
        cleanup_done.set()
        t.join(10)


def wait_quietly(predicate: object, seconds: float) -> bool:
    """Whether `predicate` becomes true within `seconds` (False is the expected answer)."""
    try:
        wait_for(predicate, seconds, "")  # type: ignore[arg-type]
    except AssertionError:
        return False
    return True


class _AheadSource:
    """Hands out a new job at every claim; records hand-backs."""

    def __init__(self) -> None:
        self.n = 0
        self.ahead_claims = 0
        self.handed_back: list[str] = []

    def recover(self, stop: threading.Event) -> list[Any]:
        return []

    def claim(
        self, offer: ClaimOffer, stop: threading.Event, *, ahead: bool = False
    ) -> ClaimResult:
        self.n += 1
        self.ahead_claims += ahead
        hw = HardwareSpecs(gpu_mem=1000, cpu_cores=1, memory=100)
        return ClaimResult(
            jobs={str(self.n): JobSpecs(handler=HandlerSpecs(image_url="i"), hardware=hw)}
        )

    def accept(self, *_a: Any) -> None:
        pass

    def reject(self, *_a: Any) -> None:
        pass

    def hand_back(self, job_id: str, reason: str) -> None:
        self.handed_back.append(job_id)

    def housekeeping(self, running: int) -> None:
        pass

    def stopping(self) -> None:
        pass

    def api_reachable(self) -> None:
        pass


def test_a_long_job_does_not_churn_the_queue_through_staged_jobs() -> None:
    # Given STAGE_AHEAD on one GPU, job 1 running for hours, and a queue full of jobs
    q = Quarantine(3)
    board = GpuBoard(None, [GPU], q)
    pool = ResourcePool(Host(8, 8000, (GPU,)), 1, board=board, stage_ahead=True)
    source = _AheadSource()
    release = threading.Event()
    bound_s = 0.05  # STAGE_AHEAD_MAX_WAIT_S, scaled down

    def execute(job: JobStart, cancel: Cancel) -> Leftover | None:
        if job.alloc.behind is not None:  # staged: download, pull, create; wait its bound
            job.alloc.ready.wait(bound_s)
            return None  # not started: handed back (WorkerTrouble, lasting=False)
        release.wait(10)
        return None

    w = Worker(source, pool, execute, LoopOptions(poll_interval_s=0.01))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        time.sleep(1.0)  # = 20 bounds
    finally:
        w.request_stop()
        release.set()
        t.join(10)
    # Then after a staged job waited its bound in vain, the fetcher does not claim another job
    # behind the same job (each would be downloaded, pulled, held as `preprocessing` and handed
    # back; the server never gives this worker a job it handed back)
    assert source.ahead_claims <= 2, f"{source.ahead_claims} jobs claimed behind job 1 in 1 s"


def test_a_stop_while_a_claimed_job_is_noted_hands_it_back_unstarted(steps: Steps) -> None:
    # Given one slot, and the first signal landing while job 1's claim is noted (after _dispatch
    # checked the stop, before the job is among the running ones)
    source = FakeSource([{"1": spec(gpu_mem=1)}])
    w = gpu_worker(source, steps)
    accept = source.accept

    def accept_then_stop(job_id: str, spec_: JobSpecs, alloc: Allocation) -> None:
        accept(job_id, spec_, alloc)
        w.request_stop()

    source.accept = accept_then_stop  # type: ignore[method-assign,assignment]
    t, out = run_in_thread(w)
    try:
        wait_for(lambda: "1" in steps.cancels, 5, "job 1's thread")
        # Then the drain does not start it: it goes back unstarted
        wait_for(lambda: steps.cancels["1"].is_set(), 2, "job 1 to be handed back")
        assert steps.cancels["1"].unstarted
        assert steps.cancels["1"].reason == "the worker is stopping; the job was not started"
    finally:
        steps.open_all()
        t.join(15)
    assert out == {"rc": 0}
