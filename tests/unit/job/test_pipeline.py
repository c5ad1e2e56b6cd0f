"""process_job with fakes: whatever fails, the job's keep-alive ends with it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from fetcher.cancel import Cancel, CancelKind
from fetcher.engine.container import RunResult
from fetcher.errors import Interrupted, NotStarted
from fetcher.job.deps import JobDeps
from fetcher.job.pipeline import JobRun, wait_for_turn
from fetcher.lifecycle import OutcomeKind
from fetcher.models import JobSpecs
from fetcher.outcome import of_failure
from fetcher.pool import Allocation
from tests.fakes import StatusSink
from tests.helpers import wait_for

if TYPE_CHECKING:
    from fetcher.gpu.board import GpuBoard
    from tests.fakes.nvml import FakeNvml


def _job_deps(tmp_path: Path, api: object, gpus: GpuBoard | None = None) -> JobDeps:
    """The deps of a job run: `api` as the worker API (a fake), a store and deliverer in tmp_path."""
    from fetcher.delivery import Deliverer
    from fetcher.settings import Settings
    from fetcher.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    settings = Settings(
        _env_file=None, api_url="http://x", access_token="tok-12345", path_base=tmp_path
    )
    return JobDeps(settings, api, None, store, Deliverer(store, api), "f", gpus=gpus)  # type: ignore[arg-type]


def _spec() -> JobSpecs:
    return JobSpecs.model_validate({"handler": {"image_url": "img"}})


def _one_a100() -> tuple[FakeNvml, GpuBoard, str]:
    """An NVML fake with one A100, its board, and its uuid."""
    from fetcher.gpu.board import GpuBoard
    from fetcher.gpu.nvml import Nvml
    from fetcher.quarantine import Quarantine
    from tests.fakes.nvml import FakeGpu, FakeNvml

    fake = FakeNvml([FakeGpu.a100()])
    nvml = Nvml(fake)
    assert nvml.open()
    gpus = nvml.devices()
    return fake, GpuBoard(nvml, gpus, Quarantine(3, quiet=True)), gpus[0].uuid


def _only_the_container_runs(
    monkeypatch: pytest.MonkeyPatch, wait: Callable[..., RunResult]
) -> None:
    """Every step of the job but the container's wait (`wait`) does nothing; nothing is reported."""
    from fetcher.engine.container import JobContainer
    from fetcher.job import pipeline

    for step in ("prepare", "download", "pull", "start", "upload"):
        monkeypatch.setattr(pipeline, step, lambda _run: None)
    monkeypatch.setattr(pipeline, "clean_up", lambda *_a, **_k: True)
    monkeypatch.setattr(pipeline, "report", lambda *_a, **_k: None)
    monkeypatch.setattr(JobContainer, "follow_logs", lambda _self, _f: None)
    monkeypatch.setattr(JobContainer, "wait", wait)


def test_the_keepalive_never_outlives_its_job_even_when_reporting_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher import outcome
    from fetcher.job import pipeline

    # Given a job whose steps fail, and whose failure cannot even be classified (a bug)
    def boom(*_: object) -> None:
        raise ValueError("a step failed")

    def broken_classify(*_: object) -> None:
        raise RuntimeError("a bug while classifying")

    monkeypatch.setattr(pipeline, "run_steps", boom)
    monkeypatch.setattr(outcome, "of_failure", broken_classify)
    sink = StatusSink()
    deps = _job_deps(tmp_path, sink)
    before = {t.name for t in threading.enumerate()}
    # When it runs, the bug escapes to the job thread's last guard ...
    with pytest.raises(RuntimeError):
        pipeline.process_job("7", _spec(), deps)
    # ... but the keep-alive has stopped: no ping goes on for a job nobody runs
    time.sleep(0.1)
    assert "keepalive-7" not in {t.name for t in threading.enumerate()} - before
    sent = len(sink.sent)
    time.sleep(0.3)
    assert len(sink.sent) == sent


class _StagedRun:
    """What `wait_for_turn` reads of a job run: a job staged behind job 4, which never ends."""

    job_id = "5"

    def __init__(self) -> None:
        self.cancel = Cancel()
        self.turn = Allocation("5", 1, 100, [], behind="4")
        self.deps = SimpleNamespace(settings=SimpleNamespace(stage_ahead_max_wait_s=0.05))

    @contextlib.contextmanager
    def stage(self, _stage: object) -> Iterator[None]:
        yield

    def check_cancel(self) -> None:
        JobRun.check_cancel(self)  # type: ignore[arg-type]


def test_a_staged_job_that_gives_up_leaves_its_place_before_its_report_and_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.job import pipeline

    # Given a job staged behind job 4 that waits its bound in vain
    def bound_passed(*_: object) -> None:
        raise NotStarted("staged ahead and job 4 still holds the GPU it waits for")

    order: list[str] = []

    def clean_up(*_a: object, **_k: object) -> bool:
        order.append("cleanup")
        return True

    monkeypatch.setattr(pipeline, "run_steps", bound_passed)
    monkeypatch.setattr(pipeline, "report", lambda *_a, **_k: order.append("report"))
    monkeypatch.setattr(pipeline, "clean_up", clean_up)
    deps = _job_deps(tmp_path, StatusSink())
    turn = Allocation("5", 1, 100, [], behind="4")
    # When it gives up
    outcome = pipeline.process_job(
        "5", _spec(), deps, turn=turn, on_give_up=lambda: order.append("gave up")
    )
    # Then it left its place first: a share freed during its report and cleanup is not its
    assert outcome.kind == OutcomeKind.handed_back
    assert order == ["gave up", "report", "cleanup"]


def test_a_job_that_got_its_share_does_not_give_it_up_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.job import pipeline

    # Given a staged job whose share came (its container may run): a later failure
    def fails(*_: object) -> None:
        raise ValueError("a step failed")

    gave_up: list[str] = []
    monkeypatch.setattr(pipeline, "run_steps", fails)
    monkeypatch.setattr(pipeline, "report", lambda *_a, **_k: None)
    monkeypatch.setattr(pipeline, "clean_up", lambda *_a, **_k: True)
    deps = _job_deps(tmp_path, StatusSink())
    turn = Allocation("5", 1, 100, [], behind="4")
    turn.activate()
    pipeline.process_job("5", _spec(), deps, turn=turn, on_give_up=lambda: gave_up.append("5"))
    # Then its share is given back with its container's end (the job thread), not before
    assert gave_up == []


def test_a_staged_job_never_started_is_handed_back_even_with_on_worker_failure_error() -> None:
    # Given ON_WORKER_FAILURE=error (a lab whose boxes share one account) and STAGE_AHEAD
    run = _StagedRun()
    # When a staged job waits its bound in vain
    with pytest.raises(NotStarted) as info:
        wait_for_turn(run)  # type: ignore[arg-type]
    # Then it goes back to the queue, unstarted: nobody's fault (reporting `error` would end a
    # job that never ran)
    outcome = of_failure(info.value, "5", run.cancel, "error")
    assert outcome.kind == OutcomeKind.handed_back, outcome.details
    assert "STAGE_AHEAD_MAX_WAIT_S" in outcome.details


def test_a_staged_job_cancelled_by_a_stop_is_handed_back_even_with_on_worker_failure_error() -> (
    None
):
    # Given a staged job the worker's first signal cancels (as Worker.request_stop does)
    run = _StagedRun()
    run.cancel.set(
        "the worker is stopping; the job was staged and not started", CancelKind.unstarted
    )
    with pytest.raises(Interrupted) as stop:
        wait_for_turn(run)  # type: ignore[arg-type]
    # Then it is handed back, whatever ON_WORKER_FAILURE says
    outcome = of_failure(stop.value, "5", run.cancel, "error")
    assert outcome.kind == OutcomeKind.handed_back, outcome.details
    assert "staged and not started" in outcome.details


def test_the_stage_ahead_bound_counts_from_the_claim_not_from_the_end_of_staging() -> None:
    # Given STAGE_AHEAD_MAX_WAIT_S=1 and a staged job whose download took 1.5 s (slow storage):
    # the server has seen it `preprocessing` since its claim
    run = _StagedRun()
    run.deps.settings.stage_ahead_max_wait_s = 1.0
    run.turn.made_at = time.monotonic() - 1.5
    # When it is ready to start and its GPU is still busy
    began = time.monotonic()
    with pytest.raises(NotStarted) as info:
        wait_for_turn(run)  # type: ignore[arg-type]
    # Then it goes back at once: its bound passed during its download
    waited = time.monotonic() - began
    assert waited < 0.5, f"waited {waited:.2f} s more after 1.5 s of staging, bound 1 s"
    assert "within 1 s of its claim" in str(info.value)


def test_a_staged_job_waits_only_what_is_left_of_its_bound() -> None:
    # Given STAGE_AHEAD_MAX_WAIT_S=1 and a staged job whose staging took 0.6 s
    run = _StagedRun()
    run.deps.settings.stage_ahead_max_wait_s = 1.0
    run.turn.made_at = time.monotonic() - 0.6
    began = time.monotonic()
    with pytest.raises(NotStarted):
        wait_for_turn(run)  # type: ignore[arg-type]
    # Then it waited the 0.4 s left, not the whole bound again
    assert 0.3 <= time.monotonic() - began < 0.8


def test_a_staged_job_whose_gpu_is_quarantined_goes_back_at_once() -> None:
    # Given a staged job whose GPU is quarantined while it waits (the pool refuses it the share)
    run = _StagedRun()
    run.deps.settings.stage_ahead_max_wait_s = 600
    threading.Timer(0.05, run.turn.refuse, ("quarantined while it waited: Xid 79",)).start()
    # Then it does not wait its bound: it goes back unstarted, saying why
    began = time.monotonic()
    with pytest.raises(NotStarted, match="Xid 79"):
        wait_for_turn(run)  # type: ignore[arg-type]
    assert time.monotonic() - began < 5


def test_a_job_whose_gpu_falls_off_the_bus_while_it_runs_is_handed_back_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.job import pipeline

    # Given a job on an A100 that falls off the bus while the job runs (Xid 79): CUDA in the
    # container dies with exit code 1, before the watch or a pass of the loop saw it
    fake, board, uuid = _one_a100()

    def run_and_lose_the_gpu(_self: object, _cancel: object, _limit: object) -> RunResult:
        fake.fall_off_bus(0)
        return RunResult(1, log_tail="CUDA error: unspecified launch failure")

    _only_the_container_runs(monkeypatch, run_and_lose_the_gpu)
    deps = _job_deps(tmp_path, StatusSink(), gpus=board)
    # When it ends
    outcome = pipeline.process_job("7", _spec(), deps, gpu_uuids=[uuid])
    # Then it is handed back for the box's trouble, naming the GPU, and the GPU is quarantined
    assert outcome.kind == OutcomeKind.handed_back, outcome.details
    assert "gpu 0: NVML cannot read it" in outcome.details
    assert "exit_code: 1" in outcome.details
    assert board.quarantine.why(uuid) is not None


def test_a_job_failing_on_its_own_on_a_healthy_gpu_is_still_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.job import pipeline

    _fake, board, uuid = _one_a100()
    _only_the_container_runs(monkeypatch, lambda *_a: RunResult(2, log_tail="bad input"))
    deps = _job_deps(tmp_path, StatusSink(), gpus=board)
    outcome = pipeline.process_job("7", _spec(), deps, gpu_uuids=[uuid])
    assert outcome.kind == OutcomeKind.error and outcome.details.startswith("exit_code: 2")
    assert board.quarantine.why(uuid) is None


def test_the_report_of_a_job_whose_keepalive_lost_touch_asks_the_server_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.errors import TransferError
    from fetcher.job import pipeline
    from fetcher.models import JobStatus
    from fetcher.outcome import Outcome
    from tests.fakes import StatusServer

    # Given a job whose keep-alive's last PUT failed (the API out of reach near the job's end:
    # the server may re-queue it, or fail it at its retry limit, meanwhile)
    server = StatusServer()
    server.put_plan["7"] = ["ok", "down"]

    def fails_after_its_ping_failed(run: JobRun, _resume: object) -> None:
        wait_for(lambda: server.received, 2, "the first PUT")
        run.keepalive.set_status(JobStatus.running)
        wait_for(lambda: len(server.puts) >= 2, 2, "the failed PUT")
        wait_for(run.keepalive.uncertain, 2, "the failure to be noted")
        raise TransferError("input data/x: 500")  # the job's own `error`

    seen: dict[str, object] = {}

    def report(_deps: object, _job: str, outcome: Outcome, *, verify: bool = False) -> None:
        seen.update(outcome=outcome, verify=verify)

    monkeypatch.setattr(pipeline, "run_steps", fails_after_its_ping_failed)
    monkeypatch.setattr(pipeline, "report", report)
    monkeypatch.setattr(pipeline, "clean_up", lambda *_a, **_k: True)
    deps = _job_deps(tmp_path, server)
    # When it ends
    pipeline.process_job("7", _spec(), deps)
    # Then its `error` is not sent blind: the deliverer asks the server first
    assert seen["verify"] is True
