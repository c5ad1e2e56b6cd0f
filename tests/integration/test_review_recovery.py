"""Review finding: crash recovery adopts a container that was created but never started (the
fetcher died between `containers.create` and `container.start`, or `start` failed and the fetcher
died before its cleanup). The engine's wait on a `created` container returns at once with
StatusCode 0, so the job was reported `finished` with `exit_code: 0` though its command never ran.
"""

from __future__ import annotations

from typing import Any

import docker.models.containers
import pytest

from fetcher.daemon import build_daemon
from tests.helpers import Env, fetcher_id, statuses
from tests.integration.test_exactly_once import finals, nothing_left, ours

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
    assert left.status == "created"
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
