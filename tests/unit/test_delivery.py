"""The one deliverer: every status that must arrive exactly once does, with a server that
loses answers, fails for ever, forgets jobs, has moved on, or answers one job oddly; with a store
that cannot write or even read; and when a queue id is claimed anew while an old report waits."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from fetcher.delivery import Deliverer
from fetcher.models import JobStatus
from fetcher.store import JobStore, StoreError
from tests.fakes import FakeClock, StatusServer

T0 = 1_000_000.0  # the fake clock's start


def deliverer(store: JobStore, server: StatusServer, clock: FakeClock) -> Deliverer:
    return Deliverer(store, server, clock=clock, max_pause_s=60)


def run_until_quiet(d: Deliverer, clock: FakeClock, rounds: int = 30) -> None:
    for _ in range(rounds):
        d.deliver_due()
        clock.now += 61


def test_a_final_status_is_delivered_once_and_remembered(store: JobStore) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.finished)] and server.gets == []
    assert d.pending() == [] and store.history()[0]["outcome"] == "finished delivered"


def test_a_lost_answer_is_not_sent_again(store: JobStore) -> None:
    # Given a server that takes the status but whose answer is lost
    server, clock = StatusServer(), FakeClock(T0)
    server.put_plan["7"] = ["lost", "ok"]
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    # Then the next try asks first, sees it arrived, and sends nothing more
    assert server.received == [("7", JobStatus.finished)]
    assert server.gets == ["7"] and d.pending() == []


def test_a_refused_try_is_sent_again_after_asking(store: JobStore) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    server.put_plan["7"] = ["down", "down", "ok"]
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.error, "exit_code: 1")
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.error)] and len(server.puts) == 3
    assert server.gets == ["7", "7"]


def test_a_put_answering_500_for_ever_waits_longer_each_time_and_a_404_drops_it(
    store: JobStore,
) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    server.put_plan["7"] = ["down"]
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    pauses = []
    for _ in range(8):
        d.deliver_due()
        nxt = store.next_due()
        assert nxt is not None
        pauses.append(nxt - clock.now)
        clock.now = nxt
    # growing pauses (with jitter), up to the cap
    assert pauses[0] <= 4 and all(p <= 60 for p in pauses) and min(pauses[-2:]) >= 30, pauses
    # When the server forgets the job (a user deletion: GET answers 404)
    server.gone.add("7")
    d.deliver_due()
    assert d.pending() == [] and server.received == []


def test_a_final_status_already_on_the_server_is_never_overwritten(store: JobStore) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    server.status["7"] = JobStatus.error
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.queued, "handed back: worker restarted", verify=True)
    run_until_quiet(d, clock)
    assert server.puts == [] and d.pending() == []


@pytest.mark.parametrize(
    ("ours", "sent"),
    [(JobStatus.queued, False), (JobStatus.error, False), (JobStatus.finished, True)],
)
def test_a_requeued_job_takes_only_a_real_result(
    store: JobStore, ours: JobStatus, sent: bool
) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    server.status["7"] = JobStatus.queued  # the server timed the job out and re-queued it
    d = deliverer(store, server, clock)
    d.submit("7", ours, "x", verify=True)
    run_until_quiet(d, clock)
    assert (server.received == [("7", ours)]) is sent and d.pending() == []


def test_a_try_cut_short_by_a_crash_is_checked_after_the_restart(tmp_path: Path) -> None:
    # Given a report whose first try was counted, then the process died (no answer known)
    first = JobStore(tmp_path / "jobs.sqlite")
    first.report("7", JobStatus.finished, "exit_code: 0")
    first.trying("7")
    first.close()
    server, clock = StatusServer(), FakeClock(T0)
    server.status["7"] = JobStatus.finished  # it had arrived
    d = deliverer(JobStore(tmp_path / "jobs.sqlite"), server, clock)
    run_until_quiet(d, clock)
    assert server.puts == [] and server.gets == ["7"] and d.pending() == []


def test_a_404_drops_the_report(store: JobStore) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    server.gone.add("7")
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    assert d.pending() == [] and "gone" in store.history()[0]["outcome"]


def test_a_report_the_disk_cannot_keep_is_delivered_from_memory(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, clock = StatusServer(), FakeClock(T0)
    d = deliverer(store, server, clock)

    def full(*a: object, **k: object) -> None:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "report", full)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    assert d.pending() == ["7"]
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.finished)] and d.pending() == []


def test_many_jobs_ending_at_once_are_each_delivered_once(store: JobStore) -> None:
    server = StatusServer()
    for i in range(40):
        server.put_plan[str(i)] = ["lost", "ok"] if i % 3 == 0 else ["ok"]
    d = Deliverer(store, server, max_pause_s=0.05).start()
    threads = [
        threading.Thread(target=d.submit, args=(str(i), JobStatus.finished, "exit_code: 0"))
        for i in range(40)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = d.stop(flush_s=20)
    assert left == []
    assert sorted(server.received) == sorted((str(i), JobStatus.finished) for i in range(40))


def test_one_odd_answer_does_not_hold_back_every_other_final_status(tmp_path: Path) -> None:
    """An answer nobody expected for one job's status (any exception) leaves that report pending and
    the others are delivered all the same."""

    class Api:
        def __init__(self) -> None:
            self.put: list[str] = []

        def get_status(self, job_id: str, **_: Any) -> JobStatus:
            if job_id == "1":
                raise ValueError("an answer nobody expected")
            return JobStatus.running

        def put_status(self, job_id: str, status: JobStatus, details: str, **_: Any) -> None:
            if job_id == "1":
                raise ValueError("an answer nobody expected")
            self.put.append(job_id)

    store = JobStore(tmp_path / "jobs.sqlite")
    api = Api()
    deliverer = Deliverer(store, api)  # type: ignore[arg-type]
    for job_id in ("1", "2"):
        store.claimed(job_id, {}, name=None, cpu_cores=1, memory_mb=1, gpus=[])
        deliverer.submit(job_id, JobStatus.finished, "exit_code: 0", verify=True)
    deliverer.deliver_due()
    assert api.put == ["2"]
    assert set(deliverer.pending()) == {"1"}


# --- a store that fails, a queue id claimed anew ------------------------------------------------
def test_a_report_in_memory_is_delivered_when_the_store_cannot_be_read_either(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails for reads too (a lost mount, EIO, a damaged file), not only writes: the
    report kept in memory is delivered all the same."""
    # Given a store that fails for everything (a lost mount, EIO, a damaged file), not only writes
    server, clock = StatusServer(), FakeClock(T0)
    d = Deliverer(store, server, clock=clock, max_pause_s=60)

    def broken(*_a: object, **_k: object) -> None:
        raise StoreError("disk I/O error")

    for name in ("report", "reports", "next_due", "trying", "retry_at", "done", "retry_all_now"):
        monkeypatch.setattr(store, name, broken)
    # When a job's final status is submitted (kept in memory, the store refuses it)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    # Then it is delivered all the same
    assert server.received == [("7", JobStatus.finished)]
    assert d.pending() == []


class ReclaimingServer(StatusServer):
    """While the deliverer asks about job 7 (an earlier try was lost), the loop claims a new job
    under the same queue id (the old one was deleted by its user and the id reused)."""

    def __init__(self, store: JobStore) -> None:
        super().__init__()
        self.store = store
        self.reclaimed = threading.Event()

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus:
        if job_id == "7" and not self.reclaimed.is_set():
            self.reclaimed.set()
            self.store.claimed(
                "7", {"handler": {"image_url": "x"}}, name=None, cpu_cores=1, memory_mb=1, gpus=[]
            )
            self.store.started("7", "container-of-the-new-job")
            return JobStatus.pulled  # the new job, just claimed by us
        return super().get_status(job_id, retry_s=retry_s, interrupt=interrupt)


def test_a_stale_report_is_neither_sent_to_nor_erases_a_job_claimed_anew_under_its_id(
    store: JobStore,
) -> None:
    """A queue id claimed anew while the deliverer holds the previous run's report in hand: the old
    run's status is not put on the new job, and the new job's durable record (its container, for
    crash recovery) stays."""
    # Given the old job 7's error report, whose first try was lost
    server, clock = ReclaimingServer(store), FakeClock(T0)
    server.put_plan["7"] = ["down"]
    d = Deliverer(store, server, clock=clock, max_pause_s=60)
    d.submit("7", JobStatus.error, "exit_code: 1 (the old job)")
    d.deliver_due()
    server.put_plan["7"] = ["ok"]
    clock.now += 3600
    # When the deliverer retries while the loop claims a new job 7
    d.deliver_due()
    assert server.reclaimed.is_set()
    # Then the old run's error is not put on the new job
    assert server.received == [], server.received
    # And the new job's record (its container, for crash recovery) is still there
    rec = store.get("7")
    assert rec is not None and rec.container_id == "container-of-the-new-job"


def test_a_report_in_memory_is_dropped_when_its_id_is_claimed_anew(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old report kept only in memory (the disk was full) is dropped when its queue id is claimed
    anew: it never reaches the new job."""
    # Given an old report kept only in memory (the disk was full when it was submitted)
    server, clock = StatusServer(), FakeClock(T0)
    server.put_plan["7"] = ["down"]
    d = Deliverer(store, server, clock=clock, max_pause_s=60)
    real_report = store.report

    def full(*_a: object, **_k: object) -> None:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "report", full)
    d.submit("7", JobStatus.error, "the old job")
    d.deliver_due()
    monkeypatch.setattr(store, "report", real_report)
    # When the id is claimed anew (as ApiJobSource.accept notes it)
    with d.claiming("7"):
        store.claimed(
            "7", {"handler": {"image_url": "x"}}, name=None, cpu_cores=1, memory_mb=1, gpus=[]
        )
    server.put_plan["7"] = ["ok"]
    server.status["7"] = JobStatus.pulled
    clock.now += 3600
    run_until_quiet(d, clock)
    # Then the old status never reaches the new job
    assert server.received == [], server.received
