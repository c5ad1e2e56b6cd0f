"""Review finding: crash recovery adopts a container that was created but never started (the
fetcher died between `containers.create` and `container.start`, or `start` failed and the fetcher
died before its cleanup). The engine's wait on a `created` container returns at once with
StatusCode 0, so the job was reported `finished` with `exit_code: 0` though its command never ran.
"""

from __future__ import annotations

import time
from typing import Any

import docker.models.containers
import pytest

from fetcher.daemon import build_daemon
from mock_api.state import Faults
from tests.helpers import Env, fetcher_id, statuses
from tests.integration.test_daemon import in_thread
from tests.integration.test_exactly_once import finals, kill_while_running, nothing_left, ours

pytestmark = pytest.mark.docker


def test_a_container_created_but_never_started_is_not_reported_finished(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job whose command fails, and a fetcher that dies right after creating its container
    # (SystemExit escapes process_job like a kill -9 would stop it: nothing reported, nothing removed)
    job = env.submit(["exit 3"], files_up={"output": "output"})
    fid = fetcher_id("created")

    def die(_self: Any, **_kw: Any) -> None:
        raise SystemExit("the fetcher dies between create and start")

    monkeypatch.setattr(docker.models.containers.Container, "start", die)
    first = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert first.run() == 0
    monkeypatch.undo()
    [left] = ours(engine, fid)
    assert left["State"] == "created"
    assert finals(job) == [], statuses(job)
    # When the fetcher starts again
    again = build_daemon(env.settings(fetcher_id=fid), exit_when_idle=True, docker_client=engine)
    assert again.run() == 0
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
    t, out = in_thread(daemon.run)
    try:
        time.sleep(45)
        # Then the re-queued job is not silently put back to `running` by the old worker
        assert statuses(job)[seen:] == [], statuses(job)[seen:]
        assert job.status.value == "queued"
    finally:
        daemon.worker.request_force_stop()
        t.join(60)
    assert out.get("rc") == 0
    assert job.status.value == "queued", statuses(job)
    nothing_left(env, engine, fid)
