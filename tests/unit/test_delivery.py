"""The job store and the one deliverer: every status that must arrive exactly once does, with a
server that loses answers, fails for ever, forgets jobs, or has moved on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fetcher.delivery import Deliverer
from fetcher.errors import ApiUnavailable, JobGone
from fetcher.models import JobStatus
from fetcher.store import JobStore, StoreError


class Server:
    """A fake server side of the status calls. `put_plan` per job: what each PUT does, in order:
    "ok", "lost" (recorded, but the answer never arrives), "down" (not recorded), "gone" (404)."""

    def __init__(self) -> None:
        self.status: dict[str, JobStatus] = {}
        self.put_plan: dict[str, list[str]] = {}
        self.gone: set[str] = set()
        self.puts: list[tuple[str, JobStatus]] = []
        self.gets: list[str] = []
        self.received: list[tuple[str, JobStatus]] = []  # PUTs that took effect
        self._lock = threading.Lock()

    def put_status(
        self,
        job_id: str,
        status: JobStatus,
        runtime_details: str | None = None,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None:
        with self._lock:
            self.puts.append((job_id, status))
            plan = self.put_plan.get(job_id) or ["ok"]
            what = plan.pop(0) if len(plan) > 1 else plan[0]
            if job_id in self.gone or what == "gone":
                raise JobGone(f"job {job_id}: gone", 404)
            if what == "down":
                raise ApiUnavailable("HTTP 500 Internal Server Error", 500)
            self.status[job_id] = status
            self.received.append((job_id, status))
            if what == "lost":
                raise ApiUnavailable("ConnectionError (the answer was lost)")

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus:
        with self._lock:
            self.gets.append(job_id)
            if job_id in self.gone:
                raise JobGone(f"job {job_id}: gone", 404)
            return self.status.get(job_id, JobStatus.running)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def deliverer(store: JobStore, server: Server, clock: Clock) -> Deliverer:
    return Deliverer(store, server, clock=clock, max_pause_s=60)


def run_until_quiet(d: Deliverer, clock: Clock, rounds: int = 30) -> None:
    for _ in range(rounds):
        d.deliver_due()
        clock.now += 61


def test_a_final_status_is_delivered_once_and_remembered(store: JobStore) -> None:
    server, clock = Server(), Clock()
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.finished)] and server.gets == []
    assert d.pending() == [] and store.history()[0]["outcome"] == "finished delivered"


def test_a_lost_answer_is_not_sent_again(store: JobStore) -> None:
    # Given a server that takes the status but whose answer is lost
    server, clock = Server(), Clock()
    server.put_plan["7"] = ["lost", "ok"]
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    # Then the next try asks first, sees it arrived, and sends nothing more
    assert server.received == [("7", JobStatus.finished)]
    assert server.gets == ["7"] and d.pending() == []


def test_a_refused_try_is_sent_again_after_asking(store: JobStore) -> None:
    server, clock = Server(), Clock()
    server.put_plan["7"] = ["down", "down", "ok"]
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.error, "exit_code: 1")
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.error)] and len(server.puts) == 3
    assert server.gets == ["7", "7"]


def test_a_put_answering_500_for_ever_waits_longer_each_time_and_a_404_drops_it(
    store: JobStore,
) -> None:
    server, clock = Server(), Clock()
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
    server, clock = Server(), Clock()
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
    server, clock = Server(), Clock()
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
    server, clock = Server(), Clock()
    server.status["7"] = JobStatus.finished  # it had arrived
    d = deliverer(JobStore(tmp_path / "jobs.sqlite"), server, clock)
    run_until_quiet(d, clock)
    assert server.puts == [] and server.gets == ["7"] and d.pending() == []


def test_a_404_drops_the_report(store: JobStore) -> None:
    server, clock = Server(), Clock()
    server.gone.add("7")
    d = deliverer(store, server, clock)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    run_until_quiet(d, clock)
    assert d.pending() == [] and "gone" in store.history()[0]["outcome"]


def test_a_report_the_disk_cannot_keep_is_delivered_from_memory(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, clock = Server(), Clock()
    d = deliverer(store, server, clock)

    def full(*a: object, **k: object) -> None:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "report", full)
    d.submit("7", JobStatus.finished, "exit_code: 0")
    assert d.pending() == ["7"]
    run_until_quiet(d, clock)
    assert server.received == [("7", JobStatus.finished)] and d.pending() == []


def test_many_jobs_ending_at_once_are_each_delivered_once(store: JobStore) -> None:
    server = Server()
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


def test_claiming_an_id_again_replaces_a_stale_report(store: JobStore) -> None:
    store.report("7", JobStatus.error, "old run")
    replaced = store.claimed("7", {"handler": {}}, name=None, cpu_cores=1, memory_mb=1, gpus=[])
    assert replaced is not None and replaced.status == JobStatus.error
    [rec] = store.jobs()
    assert rec.phase == "claimed" and rec.report is None
