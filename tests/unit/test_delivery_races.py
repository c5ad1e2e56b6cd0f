"""Review findings on the deliverer: the store failing for reads too, and a queue id claimed anew
while the deliverer holds the previous run's report in hand."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fetcher.delivery import Deliverer
from fetcher.models import JobStatus
from fetcher.store import JobStore, StoreError
from tests.unit.test_delivery import Clock, Server, run_until_quiet


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def test_a_report_in_memory_is_delivered_when_the_store_cannot_be_read_either(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store that fails for everything (a lost mount, EIO, a damaged file), not only writes
    server, clock = Server(), Clock()
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


class ReclaimingServer(Server):
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
    # Given the old job 7's error report, whose first try was lost
    server, clock = ReclaimingServer(store), Clock()
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
    # Given an old report kept only in memory (the disk was full when it was submitted)
    server, clock = Server(), Clock()
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
