"""Never lose a job, never report one twice: exactly one final status, jobs handed back on the
worker's own troubles, recovery that asks the server first, a loop that cannot die or deadlock."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.models import JobStatus
from fetcher.settings import Settings
from mock_api.state import ApiFailure, Faults, MockJob
from tests.helpers import Env, fetcher_id, statuses, wait_for
from tests.integration.test_daemon import (
    fetcher_environ,
    fetcher_process,
    in_thread,
    running_containers,
)

pytestmark = pytest.mark.docker

FINAL = ("finished", "error")


def finals(job: MockJob) -> list[str]:
    return [h["status"] for h in job.history if h["status"] in FINAL]


def last_details(job: MockJob) -> str:
    return str(job.history[-1]["runtime_details"] or "")


def ours(engine: Any, fid: str) -> list[dict[str, Any]]:
    """The containers of fetcher `fid`, as the plain listing has them (no inspect each: the
    fetcher may remove one between the listing and its inspection)."""
    return list(engine.api.containers(all=True, filters={"label": f"{LABEL_ID}={fid}"}))


def nothing_left(env: Env, engine: Any, fid: str) -> None:
    assert not ours(engine, fid), "a container is left behind"
    assert [p.name for p in env.base.iterdir()] == [".fetcher"], list(env.base.iterdir())


def output_of(proc: subprocess.Popen[bytes]) -> str:
    return proc.stdout.read().decode() if proc.stdout else ""


# --- exactly one final status ------------------------------------------------------------------
def test_one_final_status_through_a_20_s_outage_at_the_end_of_a_job(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 2"], files_up={})
    daemon = build_daemon(
        env.settings(api_retry_s=3.0, api_backoff_max_s=2.0),
        exit_when_idle=True,
        docker_client=engine,
    )
    t, out = in_thread(daemon.run)
    wait_for(lambda: job.status.value == "running", 30, "job running")
    env.state.set_faults(Faults(down_for_s=20))
    t.join(120)
    assert out.get("rc") == 0
    assert finals(job) == ["finished"], statuses(job)


def test_one_final_status_per_job_when_answers_are_slow(env: Env, engine: Any) -> None:
    # Given slow answers (each request waits 0.4 s), so that deliveries overlap with the loop
    jobs = [env.submit(["true"], files_up={}) for _ in range(6)]
    env.state.set_faults(Faults(delay_s=0.4))
    daemon = build_daemon(
        env.settings(max_parallel_jobs=3, cpu_cores=4, memory_mb=4000),
        exit_when_idle=True,
        docker_client=engine,
    )
    assert daemon.run() == 0
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
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
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
        wait_for(lambda: not ours(engine, fid), 30, "the container ended and was removed")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert finals(job) == []
    env.state.set_faults(Faults())
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    assert finals(job) == ["finished"], statuses(job)


# --- the worker's own troubles hand the job back -----------------------------------------------
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


def test_an_api_outage_longer_than_the_retry_budget_during_a_download_hands_the_job_back(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid_in = env.input_file("user1/in/x.bin", b"x" * 1000)
    job = env.submit(["true"], files_down={"in/x.bin": fid_in})
    outage_from_download(env, monkeypatch, 8)
    daemon = build_daemon(env.settings(api_retry_s=2.0), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    assert job.status.value == "queued" and finals(job) == [], statuses(job)
    assert "input" in last_details(job), last_details(job)


def test_a_refused_login_during_a_download_hands_the_job_back(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that stops accepting the worker's token when the download starts (for 3 s)
    fid_in = env.input_file("user1/in/x.bin", b"x" * 1000)
    job = env.submit(["true"], files_down={"in/x.bin": fid_in})
    real = env.state.check_in_store
    saved: dict[str, Any] = {}

    def check_in_store(path: str, what: str) -> Path:
        if what == "file id" and not saved:
            with env.state.lock:
                saved.update(env.state.tokens)
                env.state.tokens.clear()
            threading.Timer(3, lambda: env.state.tokens.update(saved)).start()
            raise ApiFailure(401, "Not verified")
        return real(path, what)

    monkeypatch.setattr(env.state, "check_in_store", check_in_store)
    daemon = build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    # Then the job is handed back (the worker's login is at fault, not the job), once the API
    # takes the worker's token again
    wait_for(lambda: job.status.value == "queued" and len(job.history) > 3, 30, "handed back")
    assert finals(job) == [], statuses(job)
    assert "input in/x.bin" in last_details(job) and "401" in last_details(job)


def outage_from_download(env: Env, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The API goes down (every request dropped) the moment the first download is asked for."""
    real = env.state.check_in_store
    started = threading.Event()

    def check_in_store(path: str, what: str) -> Path:
        if what == "file id" and not started.is_set():
            started.set()
            env.state.set_faults(Faults(down_for_s=seconds))
            raise ApiFailure(500)
        return real(path, what)

    monkeypatch.setattr(env.state, "check_in_store", check_in_store)


@pytest.mark.outage
@pytest.mark.timeout(1200)
def test_a_download_survives_a_10_minute_outage(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid_in = env.input_file("user1/in/x.bin", b"y" * 100_000)
    job = env.submit(
        ["wc -c < /files/in/x.bin > /files/output/n.txt"], files_down={"in/x.bin": fid_in}
    )
    env.state.config.failure_timeout_s = 3600
    outage_from_download(env, monkeypatch, 600)
    daemon = build_daemon(
        # the default retry budget (the tests' settings shorten it), the default backoff cap
        env.settings(
            api_retry_s=Settings.model_fields["api_retry_s"].default, api_backoff_max_s=60
        ),
        exit_when_idle=True,
        docker_client=engine,
    )
    started = time.monotonic()
    assert daemon.run() == 0
    assert time.monotonic() - started > 600
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "n.txt").read_text().strip() == "100000"


# --- crash recovery asks the server first -------------------------------------------------------
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
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
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
            lambda: [c for c in ours(engine, fid) if c["State"] == "exited"], 30, "container ended"
        )
    finally:
        proc.kill()
        proc.wait(10)
    env.state.set_faults(Faults())
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "r.txt").read_text() == "result\n"
    nothing_left(env, engine, fid)


def test_kill_9_while_the_job_runs_then_restart_adopts_it(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 4", "&&", "echo adopted > /files/output/a.txt"])
    fid = fetcher_id("adopt")
    kill_while_running(env, engine, job, fid)
    daemon = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "a.txt").read_text() == "adopted\n"
    nothing_left(env, engine, fid)


# --- nothing blocks the loop ----------------------------------------------------------------------
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
    t, _ = in_thread(daemon.run)
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
        t.join(30)


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
    t, out = in_thread(daemon.run)
    try:
        # running on the server too: the keep-alive's `running` (sent at once on the change) must
        # not land after the re-queue below, or it silently takes the job back (as the real
        # server lets it) and no second claim ever comes
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
            assert len(ours(engine, fid)) <= 1
            time.sleep(0.1)
        wait_for(lambda: job.status.value == "finished", 30, "finished")
    finally:
        daemon.worker.request_stop()
        t.join(60)
    assert out.get("rc") == 0
    assert finals(job) == ["finished"], statuses(job)
    nothing_left(env, engine, fid)


def test_a_keepalive_auth_error_does_not_cancel_the_job(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 5"], files_up={})
    daemon = build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    t, out = in_thread(daemon.run)
    wait_for(lambda: job.status.value == "running", 30, "running")
    # When the server refuses the worker's token for a while (401), then accepts it again
    with env.state.lock:
        saved = dict(env.state.tokens)
        env.state.tokens.clear()
    time.sleep(2.5)
    with env.state.lock:
        env.state.tokens.update(saved)
    t.join(60)
    assert out.get("rc") == 0
    assert finals(job) == ["finished"], statuses(job)
