"""The loop on a real engine, in a real fetcher process: the first stop signal drains, the second
stops the containers within their grace, a drain that takes too long hands the job back, a job
claimed while the fetcher stops is handed back unstarted, and a queue id claimed twice runs once.
The GPU never waits on I/O: the next job starts while the previous one uploads; with STAGE_AHEAD a
staged job is handed back after its bound and at a drain, unstarted; a kill -9 during the overlap
reports each job exactly once after a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from mock_api.state import Faults
from tests.helpers import (
    Env,
    daemon_in_thread,
    fetcher_containers,
    fetcher_environ,
    fetcher_id,
    fetcher_process,
    finals,
    last_details,
    nothing_left,
    output_of,
    run_until_idle,
    running_containers,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.docker


def test_first_sigterm_lets_the_job_finish_and_exits_0(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 3", "&&", "echo finished-normally"])
    proc = fetcher_process(env, fetcher_id("sig1"))
    try:
        wait_for(lambda: job.status.value == "running", 30, "job running")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        proc.kill()
    output = output_of(proc)
    assert rc == 0, output
    assert job.status.value == "finished", output
    assert env.state.next_id == 2 and len(job.claims) == 1


def test_second_sigterm_stops_the_container_within_grace_and_hands_the_job_back(
    env: Env, engine: Any
) -> None:
    job = env.submit(["trap '' TERM", ";", "sleep 300"])
    proc = fetcher_process(env, fetcher_id("sig2"), STOP_GRACE_S="2")
    try:
        wait_for(
            lambda: (
                job.status.value == "running" and running_containers(engine, fetcher_id("sig2"))
            ),
            30,
            "job running",
        )
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        second = time.monotonic()
        wait_for(
            lambda: (
                not engine.containers.list(
                    all=True, filters={"label": f"{LABEL_ID}={fetcher_id('sig2')}"}
                )
            ),
            15,
            "container gone",
        )
        assert time.monotonic() - second < 2 + 2.5
        rc = proc.wait(30)
    finally:
        proc.kill()
    output = output_of(proc)
    assert rc == 0, output
    assert job.status.value == "queued", statuses(job)
    assert job.history[-1]["runtime_details"].startswith("handed back by the worker: ")
    assert "worker shut down" in job.history[-1]["runtime_details"]
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


def test_drain_timeout_hands_the_job_back_and_exits_0(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 300"])
    fid = fetcher_id("drain")
    proc = fetcher_process(env, fid, DRAIN_TIMEOUT_S="1", STOP_GRACE_S="1")
    try:
        wait_for(lambda: running_containers(engine, fid), 30, "job running")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        proc.kill()
    assert rc == 0, output_of(proc)
    assert job.status.value == "queued" and finals(job) == [], statuses(job)
    assert "shut" in last_details(job) or "stop" in last_details(job), last_details(job)
    nothing_left(env, engine, fid)


def test_a_job_claimed_while_the_fetcher_stops_is_handed_back_unstarted(
    env: Env, engine: Any
) -> None:
    # Given a claim that takes 3 s to answer, and a stop signal while it is on its way
    job = env.submit(["echo should-not-run"])
    env.state.set_faults(Faults(delay_s=3))
    fid = fetcher_id("claimstop")
    proc = fetcher_process(env, fid)
    try:
        wait_for(lambda: env.state.requests_seen >= 1, 30, "the claim on its way")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        proc.kill()
    assert rc == 0, output_of(proc)
    assert statuses(job) == ["queued", "pulled", "queued"], statuses(job)
    nothing_left(env, engine, fid)


def test_a_signal_while_the_loop_holds_its_lock_still_stops_the_daemon(
    env: Env, engine: Any
) -> None:
    # Given a real fetcher whose loop holds its state lock for 3 s on every pass
    job = env.submit(["sleep 300"])
    fid = fetcher_id("lock")
    driver = (
        "import time, fetcher.worker as w\n"
        "real = w.Worker._poll_once\n"
        "def slow(self, *a, **k):\n"
        "    with self._lock:\n"
        "        time.sleep(3)\n"
        "    return real(self, *a, **k)\n"
        "w.Worker._poll_once = slow\n"
        "from fetcher.cli import main\n"
        "raise SystemExit(main(['run']))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver],
        cwd=env.root,
        env=fetcher_environ(env, fid, STOP_GRACE_S="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: running_containers(engine, fid), 60, "job running")
        time.sleep(0.5)  # the loop is now inside its 3 s with the lock held
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        proc.kill()
    assert rc == 0, output_of(proc)
    assert job.status.value == "queued", statuses(job)
    nothing_left(env, engine, fid)


def test_a_second_claim_of_a_running_queue_id_is_refused(env: Env, engine: Any) -> None:
    # Given a job that runs here, and a server that re-queues it and hands it to us again
    job = env.submit(["sleep 6"], files_up={})
    env.state.config.retry_different = False  # the server may hand a job to the same worker again
    fid = fetcher_id("twice")
    settings = env.settings(fetcher_id=fid, keepalive_interval_s=4.0, max_parallel_jobs=2)
    daemon = build_daemon(settings, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=60) as run:
        try:
            # running on the server too: the keep-alive's `running` (sent at once on the change)
            # must not land after the re-queue below, or it silently takes the job back (as the
            # real server lets it) and no second claim ever comes
            wait_for(
                lambda: running_containers(engine, fid) and job.status.value == "running",
                30,
                "job running",
            )
            env.state.config.failure_timeout_s = 0
            env.state.check_timeouts()
            env.state.config.failure_timeout_s = 300
            wait_for(lambda: len(job.claims) == 2, 10, "the second claim")
            # Then it never runs twice at once, and ends finished once
            for _ in range(20):
                assert len(fetcher_containers(engine, fid)) <= 1
                time.sleep(0.1)
            wait_for(lambda: job.status.value == "finished", 30, "finished")
        finally:
            daemon.worker.request_stop()
    assert run.rc == 0
    assert finals(job) == ["finished"], statuses(job)
    nothing_left(env, engine, fid)


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
    settings = env.settings(max_parallel_jobs=1, fetcher_id=fetcher_id("overlap"))
    assert run_until_idle(settings, engine) == 0
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
    with daemon_in_thread(daemon, timeout_s=60) as run:
        # Then the second job is claimed while the first runs, and handed back after its bound
        wait_for(lambda: staged.claims and staged.status.value == "queued", 60, "the hand-back")
        details = staged.history[-1]["runtime_details"] or ""
        assert details.startswith(
            "handed back by the worker: staged ahead and not started within 2 s of its claim"
        ), details
        assert long.status.value == "running"  # it never waited for the first to end
        daemon.worker.request_stop()
    assert run.rc == 0 and finals(long) == ["finished"]
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
    with daemon_in_thread(daemon, timeout_s=60) as run:
        wait_for(lambda: staged.claims and long.status.value == "running", 60, "staging")
        wait_for(lambda: any(r.stage == "staged" for r in daemon.deps.store.jobs()), 30, "staged")
        # When the worker is asked to stop (the first SIGTERM: drain)
        daemon.worker.request_stop()
    # Then the staged job was handed back unstarted and the running one finished
    assert run.rc == 0
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
    settings = env.settings(max_parallel_jobs=1, fetcher_id=fid, stage_ahead=True)
    assert run_until_idle(settings, engine) == 0, output
    # Then job 1 and job 2 are reported finished exactly once; job 3, staged and never started,
    # was handed back (and, claimed by nobody else here, is still queued); nothing is left
    assert finals(first) == ["finished"], statuses(first)
    assert finals(second) == ["finished"], statuses(second)
    assert finals(third) == [] and third.status.value == "queued", statuses(third)
    nothing_left(env, engine, fid)
