"""The job store: each job's durable record and its report."""

from __future__ import annotations

from fetcher.models import JobStatus
from fetcher.store import JobStore


def test_claiming_an_id_again_replaces_a_stale_report(store: JobStore) -> None:
    store.report("7", JobStatus.error, "old run")
    replaced = store.claimed("7", {"handler": {}}, name=None, cpu_cores=1, memory_mb=1, gpus=[])
    assert replaced is not None and replaced.status == JobStatus.error
    [rec] = store.jobs()
    assert rec.phase == "claimed" and rec.report is None
