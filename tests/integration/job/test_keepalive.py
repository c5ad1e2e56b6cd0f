"""The keep-alive against the mock API: a job the server failed during an outage, or whose id it
no longer knows, is stopped, not taken back; on a real engine: a job its user deletes is stopped
within one interval, and a refused token for a while does not cancel the job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fetcher.cancel import Cancel
from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.job.keepalive import KeepAlive
from fetcher.models import ClaimOffer, JobStatus
from mock_api.state import Faults, MockJob
from tests.helpers import SESSION, Env, daemon_in_thread, finals, statuses, wait_for


def containers_of(engine: Any, job_id: int) -> list[Any]:
    from fetcher.engine.container import LABEL_JOB

    found = engine.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
    return [c for c in found if (c.get("Labels") or {}).get(LABEL_ID, "").startswith(SESSION)]


@pytest.mark.docker
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


@pytest.mark.docker
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


def kept_alive(env: Env, cancel: Cancel) -> tuple[MockJob, KeepAlive]:
    """A job claimed by the fetcher's client, running, kept alive every 0.2 s."""
    job = env.submit(["sleep 1"])
    api = env.client(retry_s=0.2)
    assert str(job.id) in api.claim_jobs(ClaimOffer(memory=1000, cpu_cores=4)).jobs
    ka = KeepAlive(api, str(job.id), 0.2, cancel).start(JobStatus.running)
    wait_for(lambda: job.status == JobStatus.running, 5, "running")
    return job, ka


def test_a_job_the_server_failed_during_an_outage_is_stopped_not_taken_back(env: Env) -> None:
    # Given a job kept alive
    cancel = Cancel()
    job, ka = kept_alive(env, cancel)
    try:
        # When the API is out of reach for longer than the server's failure timeout, and the
        # server, at its retry limit, fails the job (`error`: final, its user is told)
        env.state.set_faults(Faults(down_for_s=1.5))
        with env.state.lock:
            env.state.config.failure_timeout_s = 0.3
            env.state.config.retry_limit = 0

        def failed() -> bool:
            env.state.check_timeouts()
            return job.status == JobStatus.error

        wait_for(failed, 5, "the server to fail the job")
        # Then, once the API answers again, the keep-alive stops the job
        wait_for(cancel.is_set, 5, "the job to be stopped")
    finally:
        ka.stop()
    # and never put the server's final `error` back to `running` (the job would be resurrected,
    # and its user told of a second final status later)
    assert job.status == JobStatus.error, statuses(job)
    assert job.history[-1]["runtime_details"] == "max retries reached"
    assert cancel.gone


def test_a_job_whose_id_the_server_no_longer_knows_is_stopped(env: Env) -> None:
    # Given a job kept alive
    cancel = Cancel()
    job, ka = kept_alive(env, cancel)
    try:
        # When its user deletes it and the server learns of it at its timeout check, so that the
        # worker never sees the one 404 (as when that answer is lost in transit)
        with env.state.lock:
            env.state.delete(job.id)
            env.state.config.failure_timeout_s = 0.0
            env.state.check_timeouts()
            assert job.gone
        # Then (every PUT now answers 500, GET status 404) the keep-alive stops the job within a
        # few intervals, instead of keeping it running for hours
        wait_for(cancel.is_set, 5, "the job to be stopped")
    finally:
        ka.stop()
    assert cancel.gone
