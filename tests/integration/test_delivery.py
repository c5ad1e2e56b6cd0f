"""Exactly one final status per job on a real engine: through outages at the end of a job, slow
answers, a lost answer and a killed fetcher, a restart while the API is down, a final PUT that
fails for ever, and one job's status answered with a malformed Retry-After."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fetcher.daemon import build_daemon
from fetcher.models import JobStatus
from mock_api.state import ApiFailure, Faults
from tests.helpers import (
    Env,
    HostileServer,
    daemon_in_thread,
    deep_base,
    fetcher_containers,
    fetcher_id,
    fetcher_process,
    finals,
    hostile_job,
    hostile_settings,
    nothing_left,
    output_of,
    run_until_idle,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.docker


def test_one_final_status_through_a_20_s_outage_at_the_end_of_a_job(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 2"], files_up={})
    daemon = build_daemon(
        env.settings(api_retry_s=3.0, api_backoff_max_s=2.0),
        exit_when_idle=True,
        docker_client=engine,
    )
    with daemon_in_thread(daemon, timeout_s=120) as run:
        wait_for(lambda: job.status.value == "running", 30, "job running")
        env.state.set_faults(Faults(down_for_s=20))
    assert run.rc == 0
    assert finals(job) == ["finished"], statuses(job)


def test_one_final_status_per_job_when_answers_are_slow(env: Env, engine: Any) -> None:
    # Given slow answers (each request waits 0.4 s), so that deliveries overlap with the loop
    jobs = [env.submit(["true"], files_up={}) for _ in range(6)]
    env.state.set_faults(Faults(delay_s=0.4))
    settings = env.settings(max_parallel_jobs=3, cpu_cores=4, memory_mb=4000)
    assert run_until_idle(settings, engine) == 0
    assert [finals(j) for j in jobs] == [["finished"]] * 6, [statuses(j) for j in jobs]


def test_one_final_status_when_the_answer_is_lost_and_the_fetcher_killed(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that records the final status but whose answer never arrives (it hangs)
    job = env.submit(["true"], files_up={})
    real_put = env.state.put_status
    recorded = threading.Event()

    def put_status(worker: str, job_id: int, status: JobStatus, details: str | None) -> None:
        real_put(worker, job_id, status, details)
        if status.is_final and not recorded.is_set():
            recorded.set()
            time.sleep(8)  # the fetcher is killed while it waits for this answer

    monkeypatch.setattr(env.state, "put_status", put_status)
    fid = fetcher_id("lost")
    proc = fetcher_process(env, fid, HTTP_READ_TIMEOUT_S="30")
    try:
        assert recorded.wait(60), output_of(proc)
    finally:
        proc.kill()
        proc.wait(10)
    # When the fetcher starts again
    monkeypatch.setattr(env.state, "put_status", real_put)
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    # Then the server has exactly one final status
    assert finals(job) == ["finished"], statuses(job)
    nothing_left(env, engine, fid)


def test_one_final_status_across_a_restart_while_the_api_is_down(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 1"], files_up={})
    fid = fetcher_id("restart")
    proc = fetcher_process(env, fid, API_RETRY_S="2")
    try:
        wait_for(lambda: job.status.value == "running", 30, "job running")
        env.state.set_faults(Faults(down_for_s=3600))
        wait_for(
            lambda: not fetcher_containers(engine, fid), 30, "the container ended and was removed"
        )
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert finals(job) == []
    env.state.set_faults(Faults())
    assert run_until_idle(env.settings(fetcher_id=fid), engine) == 0
    assert finals(job) == ["finished"], statuses(job)


def test_api_down_for_a_minute_while_a_job_ends_delivers_the_final_status(
    env: Env, engine: Any
) -> None:
    # Given a job that ends while the API is down for a minute
    job = env.submit(["sleep 2"], files_up={})
    settings = env.settings(api_retry_s=2.0, api_backoff_max_s=2.0)
    daemon = build_daemon(settings, exit_when_idle=True, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=120) as run:
        wait_for(lambda: job.status.value == "running", 30, "job running")
        env.state.set_faults(Faults(down_for_s=60))
        # Then the final status is kept during the outage, the daemon stays up ...
        wait_for(lambda: daemon.pending_reports() == [str(job.id)], 30, "final status kept")
        time.sleep(20)
        assert run.is_alive() and job.status.value == "running"
        # ... and it arrives, once, when the API is back
    assert run.rc == 0
    assert job.status.value == "finished" and job.history[-1]["runtime_details"] == "exit_code: 0"
    assert [h["status"] for h in job.history].count("finished") == 1
    assert daemon.pending_reports() == []


# --- nothing holds back the loop or the other jobs' statuses ----------------------------------
def test_a_final_put_answering_500_for_ever_does_not_delay_the_loop_or_the_heartbeat(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = env.submit(["true"], files_up={})
    real_put = env.state.put_status
    refused = threading.Event()

    def put_status(worker: str, job_id: int, status: JobStatus, details: str | None) -> None:
        if job_id == stuck.id and status.is_final:
            refused.set()
            raise ApiFailure(500)
        real_put(worker, job_id, status, details)

    monkeypatch.setattr(env.state, "put_status", put_status)
    settings = env.settings(api_retry_s=30.0)
    daemon = build_daemon(settings, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=30):
        try:
            assert refused.wait(30), "the final status was sent"
            time.sleep(1)
            # When another job arrives, it is claimed and run at once, and the heartbeat stays fresh
            later = env.submit(["true"], files_up={})
            submitted = time.monotonic()
            wait_for(lambda: later.status.value == "finished", 30, "the next job finished")
            assert time.monotonic() - submitted < 10
            heartbeat = settings.state_dir.heartbeat
            assert time.time() - heartbeat.stat().st_mtime < 5
            assert daemon.pending_reports() == [str(stuck.id)]
            # And once the server forgets the job (user deletion: GET answers 404), it is dropped
            env.state.delete(stuck.id)
            daemon.deps.deliverer.retry_now()
            wait_for(lambda: not daemon.pending_reports(), 60, "the stuck status dropped")
            assert "finished" not in statuses(stuck)
        finally:
            daemon.worker.request_stop()


def test_a_malformed_retry_after_on_one_jobs_status_does_not_block_the_others(
    tmp_path: Path, engine: Any
) -> None:
    """Job 1's final status PUT (and its status GET) answer 503 with `Retry-After: 120s` (a value
    that is neither seconds nor an HTTP date). Job 2 ends later; its status must still be delivered."""
    base = deep_base(tmp_path)

    def busy_for_job_1(h: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(h.path).query)
        if h.path.startswith("/jobs/1/status") and (
            h.command == "GET" or q.get("status", [""])[0] in ("finished", "error")
        ):
            h.answer(503, b'{"detail":"busy"}', {"Retry-After": "120s"})  # type: ignore[attr-defined]
            return
        if h.command == "PUT":
            server.puts.append((urlsplit(h.path).path, q))
            h.answer(204)  # type: ignore[attr-defined]
        else:
            h.answer(404, b"{}")  # type: ignore[attr-defined]

    claims = [
        json.dumps({"1": hostile_job()}).encode(),
        b"{}",
        json.dumps({"2": hostile_job("sleep 1")}).encode(),
    ]
    server = HostileServer(
        claims, {("PUT", "/jobs/"): busy_for_job_1, ("GET", "/jobs/1/"): busy_for_job_1}
    )
    with server:
        daemon = build_daemon(hostile_settings(server.url, base), docker_client=engine)
        with daemon_in_thread(daemon, timeout_s=60):
            try:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    if any(s in ("finished", "error") for s, _ in server.reports_of("2")):
                        break
                    time.sleep(0.2)
                two = server.reports_of("2")
            finally:
                daemon.worker.request_force_stop()
    assert any(s == "finished" for s, _ in two), (
        f"job 2's final status never reached the server: {two}"
    )
