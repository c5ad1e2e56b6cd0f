"""Quarantine: K failures in a row of a GPU's or the box's own trouble take it out; a job that ran
proves them well again; stops, outages and the job's own faults count for nothing."""

from __future__ import annotations

import pytest

from fetcher.lifecycle import OutcomeKind
from fetcher.outcome import Outcome, Trouble
from fetcher.quarantine import BOX, Quarantine


def trouble(kind: Trouble) -> Outcome:
    return Outcome(OutcomeKind.handed_back, "handed back by the worker: x", trouble=kind)


def ran() -> Outcome:
    return Outcome(OutcomeKind.error, "exit_code: 1", ran=True)


def test_k_gpu_failures_in_a_row_quarantine_that_gpu_only(caplog: pytest.LogCaptureFixture) -> None:
    q = Quarantine(3)
    for _ in range(2):
        q.record(trouble(Trouble.gpu), ["GPU-a"])
    assert q.why("GPU-a") is None
    with caplog.at_level("ERROR"):
        q.record(trouble(Trouble.gpu), ["GPU-a"])
        q.record(trouble(Trouble.gpu), ["GPU-a"])  # already quarantined: logged once
    assert q.why(
        "GPU-a",
    ) is not None and "3 jobs in a row" in (q.why("GPU-a") or "")
    assert q.why(BOX) is None and q.why("GPU-b") is None
    assert len([r for r in caplog.records if "quarantined" in r.getMessage()]) == 1


def test_a_job_that_ran_resets_the_count() -> None:
    q = Quarantine(2)
    q.record(trouble(Trouble.gpu), ["GPU-a"])
    q.record(ran(), ["GPU-a"])
    q.record(trouble(Trouble.gpu), ["GPU-a"])
    assert q.why("GPU-a") is None


def test_box_trouble_quarantines_the_box() -> None:
    q = Quarantine(2)
    q.record(trouble(Trouble.box), [])
    q.record(trouble(Trouble.box), ["GPU-a"])
    assert q.why(BOX) is not None and q.why("GPU-a") is None


def test_stops_outages_and_the_jobs_own_faults_count_for_nothing() -> None:
    q = Quarantine(1)
    q.record(trouble(Trouble.none), ["GPU-a"])
    q.record(Outcome(OutcomeKind.error, "invalid job spec: x", trouble=Trouble.none), ["GPU-a"])
    q.record(Outcome(OutcomeKind.gone, "gone"), ["GPU-a"])
    assert q.items() == {}


def test_lifting_returns_what_was_lifted_and_counts_start_again() -> None:
    q = Quarantine(1)
    q.put("GPU-a", "critical Xid 79 reported by NVML")
    q.record(trouble(Trouble.box), [])
    assert set(q.items()) == {"GPU-a", BOX}
    assert q.lift(["GPU-a", "GPU-z"]) == ["GPU-a"]
    assert q.lift() == [BOX]
    assert q.items() == {}
