"""The keep-alive on a real engine: a job its user deletes is stopped within one interval; a
refused token for a while does not cancel the job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from tests.helpers import SESSION, Env, daemon_in_thread, finals, statuses, wait_for

pytestmark = pytest.mark.docker


def containers_of(engine: Any, job_id: int) -> list[Any]:
    from fetcher.engine.container import LABEL_JOB

    found = engine.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
    return [c for c in found if (c.get("Labels") or {}).get(LABEL_ID, "").startswith(SESSION)]


def test_job_deleted_mid_run_is_stopped_within_one_keepalive_interval(
    env: Env, engine: Any
) -> None:
    # Given a long job that is running
    job = env.submit(["echo started", "&&", "sleep 300"])
    settings = env.settings(keepalive_interval_s=1.0, stop_grace_s=1.0)
    daemon = build_daemon(settings, exit_when_idle=True, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=30) as run:
        wait_for(
            lambda: job.status.value == "running" and containers_of(engine, job.id),
            30,
            "job running",
        )
        # When its user deletes it
        env.state.delete(job.id)
        deleted_at = time.monotonic()
        # Then the container is gone within one keep-alive interval (plus the stop itself)
        wait_for(lambda: not containers_of(engine, job.id), 10, "container removed")
        assert time.monotonic() - deleted_at < 1.0 + 1.0 + 1.5
    assert run.rc == 0
    assert job.uploads == [], "a gone job is not uploaded"
    assert (
        job.status.value == "running" and job.history[-1]["status"] == "running"
    )  # no status after the 404
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


def test_a_keepalive_auth_error_does_not_cancel_the_job(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 5"], files_up={})
    daemon = build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=60) as run:
        wait_for(lambda: job.status.value == "running", 30, "running")
        # When the server refuses the worker's token for a while (401), then accepts it again
        with env.state.lock:
            saved = dict(env.state.tokens)
            env.state.tokens.clear()
        time.sleep(2.5)
        with env.state.lock:
            env.state.tokens.update(saved)
    assert run.rc == 0
    assert finals(job) == ["finished"], statuses(job)
