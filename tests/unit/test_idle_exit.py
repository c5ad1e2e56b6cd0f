"""`--exit-when-idle` leaves after EXIT_IDLE_POLLS empty polls in a row, not on one transient empty answer."""

from __future__ import annotations

import threading

import pytest

from fetcher.cancel import Cancel
from fetcher.errors import ApiUnavailable, InvalidJobSpec
from fetcher.host import Host
from fetcher.models import ClaimOffer, ClaimResult, HandlerSpecs, HardwareSpecs, JobSpecs
from fetcher.pool import Allocation, ResourcePool
from fetcher.settings import Settings
from fetcher.worker import Adoption, JobStart, LoopOptions, Worker

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

    def stopping(self) -> None:
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

    def housekeeping(self, running: int) -> None:
        pass


def run(answers: Answers, polls: int) -> tuple[int, list[str]]:
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
    rc, executed = run(source, polls)
    # Then it exits 0 after `polls` empty answers in a row, having run every job it got
    assert rc == 0
    assert source.claims == claims
    assert executed == done


def test_exit_idle_polls_setting() -> None:
    base = {"api_url": "http://x", "access_token": "t", "path_base": "/tmp"}
    assert Settings(_env_file=None, **base).exit_idle_polls == 3  # type: ignore[arg-type]
    s = Settings(_env_file=None, exit_idle_polls=5, **base)  # type: ignore[arg-type]
    assert s.exit_idle_polls == 5
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings(_env_file=None, exit_idle_polls=0, **base)  # type: ignore[arg-type]
