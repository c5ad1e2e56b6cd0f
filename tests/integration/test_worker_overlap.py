"""The GPU never waits on I/O, on the real engine: the next job starts while the previous one
uploads (shown by the order of events: the server holds the first job's upload until the second
job runs); with STAGE_AHEAD a staged job is handed back after its bound and at a drain, unstarted;
a kill -9 during the overlap, then a restart, reports each job exactly once and leaves nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from tests.helpers import Env, fetcher_id, statuses, wait_for
from tests.integration.test_daemon import fetcher_process, in_thread
from tests.integration.test_exactly_once import finals, nothing_left, output_of

pytestmark = pytest.mark.docker

WITH_OUTPUT = ["sleep 1", "&&", "echo result > /files/output/result.txt"]


def test_the_next_job_starts_while_the_previous_one_uploads(env: Env, engine: Any) -> None:
    # Given one slot, and two jobs; the server holds job 1's upload until job 2 is running: a
    # fetcher that uploads in the GPU's time would never get there
    first = env.submit(WITH_OUTPUT)
    second = env.submit(["sleep 2"])
    order: list[str] = []

    def hold_first_upload(job_id: int) -> None:
        if job_id == first.id and "held" not in order:
            order.append("held")
            try:
                wait_for(lambda: second.status.value == "running", 60, "job 2 to run")
                order.append("job 2 ran while job 1 uploaded")
            except AssertionError:
                order.append("job 2 did not run while job 1 uploaded")

    env.state.upload_gate = hold_first_upload
    daemon = build_daemon(
        env.settings(max_parallel_jobs=1, fetcher_id=fetcher_id("overlap")),
        exit_when_idle=True,
        docker_client=engine,
    )
    assert daemon.run() == 0
    # Then job 2 ran while job 1's upload was held, and each ended once, finished
    assert order == ["held", "job 2 ran while job 1 uploaded"], order
    assert finals(first) == ["finished"] and finals(second) == ["finished"]
    # job 1 reported finished only after job 2 had started
    first_final = next(h["time"] for h in first.history if h["status"] == "finished")
    second_running = next(h["time"] for h in second.history if h["status"] == "running")
    assert second_running < first_final


def test_a_staged_job_not_started_within_its_bound_is_handed_back(env: Env, engine: Any) -> None:
    # Given STAGE_AHEAD with a 2 s bound, and a long job ahead of a second one
    long = env.submit(["sleep 8"], files_up={})
    staged = env.submit(["true"], files_up={})
    fid = fetcher_id("bound")
    daemon = build_daemon(
        env.settings(
            max_parallel_jobs=1, fetcher_id=fid, stage_ahead=True, stage_ahead_max_wait_s=2
        ),
        docker_client=engine,
    )
    t, out = in_thread(daemon.run)
    try:
        # Then the second job is claimed while the first runs, and handed back after its bound
        wait_for(lambda: staged.claims and staged.status.value == "queued", 60, "the hand-back")
        details = staged.history[-1]["runtime_details"] or ""
        assert details.startswith("handed back by the worker: staged ahead for 2 s"), details
        assert long.status.value == "running"  # it never waited for the first to end
    finally:
        daemon.worker.request_stop()
        t.join(60)
    assert out.get("rc") == 0 and finals(long) == ["finished"]
    assert [s for s in statuses(staged) if s in ("running", "finished", "error")] == []
    nothing_left(env, engine, fid)


def test_a_drain_hands_a_staged_job_back_unstarted(env: Env, engine: Any) -> None:
    long = env.submit(["sleep 4"], files_up={})
    staged = env.submit(["true"], files_up={})
    fid = fetcher_id("drain")
    daemon = build_daemon(
        env.settings(max_parallel_jobs=1, fetcher_id=fid, stage_ahead=True),
        docker_client=engine,
    )
    t, out = in_thread(daemon.run)
    try:
        wait_for(lambda: staged.claims and long.status.value == "running", 60, "staging")
        wait_for(lambda: any(r.stage == "staged" for r in daemon.deps.store.jobs()), 30, "staged")
    finally:
        # When the worker is asked to stop (the first SIGTERM: drain)
        daemon.worker.request_stop()
        t.join(60)
    # Then the staged job was handed back unstarted and the running one finished
    assert out.get("rc") == 0
    assert finals(long) == ["finished"]
    details = staged.history[-1]["runtime_details"] or ""
    assert staged.status.value == "queued"
    assert details == (
        "handed back by the worker: the worker is stopping; the job was staged and not started"
    ), details
    nothing_left(env, engine, fid)


def test_kill_9_during_the_overlap_then_a_restart_reports_each_job_once(
    env: Env, engine: Any
) -> None:
    # Given a fetcher process with STAGE_AHEAD: job 1 uploading (the server holds it), job 2
    # running on the slot it freed, job 3 staged behind job 2
    first = env.submit(WITH_OUTPUT)
    second = env.submit(["sleep 6"], files_up={})
    third = env.submit(["true"], files_up={})
    release = threading.Event()

    def hold(job_id: int) -> None:
        if job_id == first.id:
            release.wait(120)

    env.state.upload_gate = hold
    fid = fetcher_id("kill9")
    proc = fetcher_process(env, fid, MAX_PARALLEL_JOBS="1", STAGE_AHEAD="1")
    try:
        wait_for(lambda: second.status.value == "running" and third.claims, 60, "the overlap")
        # When the fetcher is killed with -9 in the middle of it
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
        release.set()
    output = output_of(proc)
    # and starts again
    daemon = build_daemon(
        env.settings(max_parallel_jobs=1, fetcher_id=fid, stage_ahead=True),
        exit_when_idle=True,
        docker_client=engine,
    )
    assert daemon.run() == 0, output
    # Then job 1 and job 2 are reported finished exactly once; job 3, staged and never started,
    # was handed back (and, claimed by nobody else here, is still queued); nothing is left
    assert finals(first) == ["finished"], statuses(first)
    assert finals(second) == ["finished"], statuses(second)
    assert finals(third) == [] and third.status.value == "queued", statuses(third)
    nothing_left(env, engine, fid)
