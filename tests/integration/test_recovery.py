"""What an earlier life left, settled at the next start: after a kill -9 the server is asked
first (a job it re-queued is left alone, one that ended is uploaded and reported, one still running
is adopted), a container created but never started is not `finished`, and a deep tree left behind
does not stop the start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker.errors
import docker.models.containers
import pytest

from fetcher.daemon import build_daemon
from mock_api.state import Faults, MockJob
from tests.helpers import (
    DEEP_TREE,
    Env,
    daemon_in_thread,
    fetcher_containers,
    fetcher_id,
    fetcher_process,
    finals,
    nothing_left,
    only_state_left,
    run_until_idle,
    running_containers,
    starts_again,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.docker


def kill_while_running(env: Env, engine: Any, job: MockJob, fid: str) -> None:
    proc = fetcher_process(env, fid)
    try:
        wait_for(
            lambda: job.status.value == "running" and running_containers(engine, fid), 30, "running"
        )
    finally:
        proc.kill()
        proc.wait(10)


def test_kill_9_then_restart_leaves_alone_a_job_the_server_requeued(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 300"])
    fid = fetcher_id("requeued")
    kill_while_running(env, engine, job, fid)
    # the server times the silent job out and re-queues it
    env.state.config.failure_timeout_s = 0
    env.state.check_timeouts()
    assert job.status.value == "queued"
    seen = len(job.history)
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    assert len(job.history) == seen and job.status.value == "queued", statuses(job)
    nothing_left(env, engine, fid)


def test_kill_9_after_the_container_ended_then_restart_uploads_and_reports_finished(
    env: Env, engine: Any
) -> None:
    job = env.submit(["echo result > /files/output/r.txt", "&&", "sleep 2"])
    fid = fetcher_id("ended")
    proc = fetcher_process(env, fid)
    try:
        wait_for(lambda: job.status.value == "running", 30, "running")
        env.state.set_faults(Faults(delay_s=60))  # the fetcher hangs on the API from now on
        wait_for(
            lambda: [c for c in fetcher_containers(engine, fid) if c["State"] == "exited"],
            30,
            "container ended",
        )
    finally:
        proc.kill()
        proc.wait(10)
    env.state.set_faults(Faults())
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "r.txt").read_text() == "result\n"
    nothing_left(env, engine, fid)


def test_kill_9_while_the_job_runs_then_restart_adopts_it(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 4", "&&", "echo adopted > /files/output/a.txt"])
    fid = fetcher_id("adopt")
    kill_while_running(env, engine, job, fid)
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "a.txt").read_text() == "adopted\n"
    nothing_left(env, engine, fid)


def test_a_container_created_but_never_started_is_not_reported_finished(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container left `created` but never started (the fetcher died between `containers.create`
    and `container.start`) is never reported `finished` with `exit_code: 0` (the engine's wait on
    such a container returns at once with StatusCode 0): its command really runs, or the job goes
    back to the queue unstarted."""
    # Given a job whose command fails, and a fetcher that dies right after creating its container
    # (SystemExit escapes process_job like a kill -9 would stop it: nothing reported, nothing removed)
    job = env.submit(["exit 3"], files_up={"output": "output"})
    fid = fetcher_id("created")

    def die(_self: Any, **_kw: Any) -> None:
        raise SystemExit("the fetcher dies between create and start")

    monkeypatch.setattr(docker.models.containers.Container, "start", die)
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    monkeypatch.undo()
    [left] = fetcher_containers(engine, fid)
    assert left["State"] == "created"
    assert finals(job) == [], statuses(job)
    # When the fetcher starts again
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    # Then the job is not `finished` with exit code 0: either its command really ran (exit 3 ->
    # error), or the job went back to the queue unstarted
    assert finals(job) != ["finished"], statuses(job)
    assert job.status.value in ("error", "queued"), statuses(job)
    if job.status.value == "error":
        assert "exit_code: 3" in str(job.history[-1]["runtime_details"])
    nothing_left(env, engine, fid)


def test_a_job_adopted_while_the_api_was_down_is_not_taken_back_after_the_server_requeued_it(
    env: Env, engine: Any
) -> None:
    # Given a fetcher killed while its job runs, and the server re-queueing the silent job
    job = env.submit(["sleep 300"])
    fid = fetcher_id("requeued-down")
    kill_while_running(env, engine, job, fid)
    env.state.config.failure_timeout_s = 0
    env.state.check_timeouts()
    assert job.status.value == "queued"
    seen = len(job.history)
    # When the fetcher restarts while the API cannot be reached (recovery cannot ask the server,
    # so it adopts the running container), and the API comes back afterwards
    env.state.set_faults(Faults(down_for_s=35))
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=60) as run:
        try:
            time.sleep(45)
            # Then the re-queued job is not silently put back to `running` by the old worker
            assert statuses(job)[seen:] == [], statuses(job)[seen:]
            assert job.status.value == "queued"
        finally:
            daemon.worker.request_force_stop()
    assert run.rc == 0
    assert job.status.value == "queued", statuses(job)
    nothing_left(env, engine, fid)


def test_a_deep_tree_left_by_a_killed_fetcher_does_not_stop_the_next_start(
    env: Env, engine: Any
) -> None:
    job = env.submit([DEEP_TREE, "&&", "touch /files/tree-done", "&&", "sleep 2"])
    fid = fetcher_id("deep")
    proc = fetcher_process(env, fid)
    try:
        wait_for(lambda: (env.base / str(job.id) / "tree-done").exists(), 120, "the deep tree")
    finally:
        proc.kill()
        proc.wait(10)
    # When the fetcher starts again (same FETCHER_ID, so it finds its own leftovers)
    assert run_until_idle(env.settings(fetcher_id=fid), engine, timeout_s=180) == 0
    assert job.status.value in ("finished", "queued"), statuses(job)
    only_state_left(env)
    starts_again(env, engine)
