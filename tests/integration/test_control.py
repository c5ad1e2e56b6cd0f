"""`fetcher pause` / `fetcher resume` on the real engine: no new claims while paused, running
jobs go on and report; the pause survives a restart of the daemon; `fetcher status`, the log and
the metrics show it; an --exit-when-idle pilot that is paused leaves when nothing runs."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher.cli import main
from fetcher.daemon import build_daemon
from fetcher.status import gather, render
from tests.helpers import Env, daemon_in_thread, fetcher_id, run_until_idle, wait_for

pytestmark = pytest.mark.docker


def test_a_pause_lets_the_running_job_finish_claims_nothing_survives_a_restart_and_resume_ends_it(
    env: Env, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a daemon running a job
    running = env.submit(["sleep 3"], files_up={})
    fid = fetcher_id("pause")
    settings = env.settings(fetcher_id=fid, metrics_port=0)
    daemon = build_daemon(settings, docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=60):
        wait_for(lambda: running.status.value == "running", 60, "the job to run")
        # When the admin pauses it (on the host, or through `docker exec`: the same command)
        assert main(["pause", "--path-base", str(env.base), "--reason", "driver update"]) == 0
        waiting = env.submit(["true"], files_up={})
        # Then the running job goes on and reports, and nothing new is claimed
        wait_for(lambda: running.status.value == "finished", 60, "the running job to finish")
        wait_for(lambda: "driver update" in str(daemon.worker.source.paused), 10, "the pause")  # type: ignore[attr-defined]
        assert waiting.claims == []
        text = render(gather(env.base))
        assert "paused by" in text and "driver update" in text and "fetcher resume" in text
        import urllib.request

        port = daemon.deps.metrics.port
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'fetcher_claims_paused{reason="admin"} 1.0' in page
        daemon.worker.request_stop()
    # When the daemon restarts, it is still paused
    again = build_daemon(env.settings(fetcher_id=fid), docker_client=engine)
    with caplog.at_level("INFO"), daemon_in_thread(again, timeout_s=60):
        wait_for(lambda: again.worker.source.paused, 30, "the pause after the restart")  # type: ignore[attr-defined]
        assert waiting.claims == []
        # and `fetcher resume` lets it claim again
        assert main(["resume", "--path-base", str(env.base)]) == 0
        wait_for(lambda: waiting.status.value == "finished", 60, "the waiting job")
        again.worker.request_stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("worker: claiming no job: paused by") for m in lines), lines
    assert "worker: claiming again" in lines


def test_a_paused_pilot_leaves_when_nothing_runs(env: Env, engine: Any) -> None:
    env.submit(["true"], files_up={})
    settings = env.settings(fetcher_id=fetcher_id("pilot"), exit_idle_polls=2)
    assert main(["pause", "--path-base", str(env.base)]) == 0
    # the hang guard fails the test if a paused pilot with nothing to run does not leave
    assert run_until_idle(settings, engine, timeout_s=60) == 0
    assert env.state.jobs[1].claims == []
