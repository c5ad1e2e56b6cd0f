"""Review finding: a claim answer that names a job running here again is refused for a valid spec
(`_dispatch`), but with a spec that does not parse it went to `reject`, which reports `error` for
the queue id of the job still running here (and, through the store, turns its row into a report
that the deliverer then deletes: the running job's durable record is lost)."""

from __future__ import annotations

from fetcher.errors import InvalidJobSpec
from fetcher.models import ClaimResult
from tests.helpers import wait_for
from tests.unit.test_worker import FakeSource, Jobs, run_in_thread, spec, worker


def test_an_invalid_spec_under_the_id_of_a_job_running_here_is_not_reported() -> None:
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
