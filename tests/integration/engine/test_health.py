"""Engine restarts never fail a job, on a private engine of the test's own (tests/helpers/private_engine.py:
its own data root, exec root, socket, network and mount namespaces; the host's engine is never
touched). Without live-restore the restart stops the job's container: the job is handed back,
naming the restart; with live-restore it survives, and its whole output is kept. The log says it
once (one WARNING when the engine goes, one INFO when it is back). Each ends with a second job
that runs to `finished`, and nothing left."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetcher import leftovers
from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.recovery import ENGINE_LOST_KEY
from fetcher.store import JobStore
from tests.helpers import (
    IMAGE,
    Env,
    daemon_in_thread,
    fetcher_id,
    fetcher_process,
    finals,
    output_of,
    run_until_idle,
    wait_for,
)
from tests.helpers.private_engine import PrivateEngine

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RESTART_REASON = "the Docker engine restarted and stopped the job's container"


@pytest.fixture
def private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Any
) -> Iterator[PrivateEngine]:
    monkeypatch.setattr(leftovers, "LEFTOVER_RETRY_S", 1.0)
    with PrivateEngine(tmp_path / "engine") as pe:
        pe.load_image(IMAGE)
        yield pe


def ours(pe: PrivateEngine, fid: str) -> list[Any]:
    return list(pe.client.api.containers(all=True, filters={"label": f"{LABEL_ID}={fid}"}))


def engine_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("docker engine:")
    ]


def test_without_live_restore_the_restart_hands_the_job_back_and_the_next_job_runs(
    env: Env, private: PrivateEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job that runs 20 s on the private engine (no live-restore: Docker's default)
    job = env.submit(["echo started", "&&", "sleep 20"], files_up={})
    fid = fetcher_id("restart")
    daemon = build_daemon(env.settings(fetcher_id=fid), docker_client=private.client)
    with daemon_in_thread(daemon, timeout_s=60):
        wait_for(lambda: job.status.value == "running", 60, "the job to run")
        with caplog.at_level(logging.INFO):
            # When the engine restarts (SIGTERM to dockerd, as a package upgrade does)
            private.restart()
            # Then the job is handed back naming the restart, never reported `error`
            wait_for(lambda: job.status.value == "queued", 60, "the hand-back")
            details = job.history[-1]["runtime_details"] or ""
            assert details.startswith(f"handed back by the worker: {RESTART_REASON}"), details
            assert finals(job) == []
            # and a second job runs to `finished` on the restarted engine
            second = env.submit(["echo second"], files_up={})
            wait_for(lambda: second.status.value == "finished", 60, "the second job")
            wait_for(lambda: not ours(private, fid), 30, "its containers to go")
        daemon.worker.request_stop()
    # The log says it once each way, and no ERROR about the engine or the container
    said = engine_lines(caplog)
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [], errors


def test_with_live_restore_the_job_runs_on_and_its_whole_output_is_kept(
    env: Env, tmp_path: Path, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateEngine(tmp_path / "engine", live_restore=True) as pe:
        pe.load_image(IMAGE)
        # Given a job that writes before, during and after an engine restart
        job = env.submit(
            ["for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 1; done"], files_up={"log": "log"}
        )
        fid = fetcher_id("live")
        daemon = build_daemon(env.settings(fetcher_id=fid), docker_client=pe.client)
        with daemon_in_thread(daemon, timeout_s=60):
            wait_for(lambda: job.status.value == "running", 60, "the job to run")
            time.sleep(2)
            with caplog.at_level(logging.INFO):
                # When the engine restarts with live-restore on
                pe.restart()
                # Then the job is followed to `finished`
                wait_for(lambda: job.status.value == "finished", 60, "the job to finish")
            # and its whole log is kept: every line, once
            log = Path(job.paths_upload["log"], "log", "container.log").read_text()
            lines = [line for line in log.splitlines() if line.startswith("line-")]
            assert lines == [f"line-{i}" for i in range(1, 9)], log
            second = env.submit(["echo second"], files_up={})
            wait_for(lambda: second.status.value == "finished", 60, "the second job")
            wait_for(lambda: not ours(pe, fid), 30, "its containers to go")
            daemon.worker.request_stop()
        said = engine_lines(caplog)
        assert [level for level, _ in said] == ["WARNING", "INFO"], said


def test_a_fetcher_stopped_with_the_engine_hands_the_job_back_after_both_restart(
    env: Env, private: PrivateEngine
) -> None:
    # Given a fetcher process (as in its own container on that engine) running a job
    job = env.submit(["sleep 30"], files_up={})
    fid = fetcher_id("together")
    proc = fetcher_process(env, fid, DOCKER_HOST=private.url)
    try:
        wait_for(lambda: job.status.value == "running", 60, "the job to run")
        # When the engine restarts: its API goes, then it stops every container it runs, the
        # fetcher's too (SIGTERM, and SIGKILL after its stop timeout, 10 s)
        pid = private.signal(signal.SIGTERM)
        wait_for(lambda: not private.socket.exists(), 10, "the engine's API to go")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
        private.wait_exit(pid)
        private.start()
    finally:
        proc.kill()
        proc.wait(10)
    output = output_of(proc)
    # and the fetcher starts again (its container's restart policy), with a second job queued
    second = env.submit(["echo second"], files_up={})
    assert run_until_idle(env.settings(fetcher_id=fid), private.client) == 0, output
    # Then the first job was handed back once, naming the restart, never `error`
    assert finals(job) == [], output
    handed = [h for h in job.history if h["status"] == "queued" and h["runtime_details"]]
    assert len(handed) == 1, job.history
    assert RESTART_REASON in (handed[0]["runtime_details"] or ""), output
    assert finals(second) == ["finished"]
    assert not ours(private, fid)


def test_recovery_hands_back_a_job_the_engine_stopped_after_the_fetcher_saw_it_go(
    env: Env, private: PrivateEngine
) -> None:
    # Given a fetcher killed with -9 while its job ran, that had seen its engine go away
    job = env.submit(["sleep 30"], files_up={})
    fid = fetcher_id("marker")
    proc = fetcher_process(env, fid, DOCKER_HOST=private.url)
    try:
        wait_for(lambda: job.status.value == "running", 60, "the job to run")
    finally:
        proc.kill()
        proc.wait(10)
    settings = env.settings(fetcher_id=fid)
    store = JobStore(settings.state_dir.store)
    store.set_meta(ENGINE_LOST_KEY, time.time())
    store.close()
    # When the engine restarts (no live-restore: it stops the job's container, exit code 143)
    private.restart()
    # and the fetcher starts again
    assert run_until_idle(settings, private.client) == 0
    # Then the job is handed back naming the restart, not reported `error`
    assert finals(job) == [], job.history
    assert job.status.value == "queued"
    assert RESTART_REASON in (job.history[-1]["runtime_details"] or "")
    assert not ours(private, fid)
