"""Containers the engine would not remove: retried until they go (also just before the daemon
exits: nothing is left behind). One that ended holds no share; one that may still run on its GPU
keeps its job's share until it is gone (see the worker's unit tests)."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher.engine.container import LABEL_ID
from tests.helpers import Env, fetcher_id, run_until_idle

pytestmark = pytest.mark.docker


def test_an_ended_container_the_engine_will_not_remove_is_removed_later_and_holds_no_slot(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A container that ended holds no GPU: its share goes to the next job at once. Its removal,
    refused once, is retried until it is gone, before the daemon exits."""
    import docker.api.client

    from fetcher import leftovers

    monkeypatch.setattr(leftovers, "LEFTOVER_RETRY_S", 1.0)
    real_remove = docker.api.client.APIClient.remove_container
    refused: list[str] = []

    def remove_once_refused(self: Any, container: str, **kwargs: Any) -> Any:
        if not refused:  # the engine refuses the first removal only
            refused.append(container)
            raise docker.errors.APIError("engine busy (simulated)")
        return real_remove(self, container, **kwargs)

    monkeypatch.setattr(docker.api.client.APIClient, "remove_container", remove_once_refused)
    fid = fetcher_id("leftover")
    first = env.submit(["echo first"])
    second = env.submit(["echo second"])
    with caplog.at_level("INFO"):
        assert run_until_idle(env.settings(max_parallel_jobs=1, fetcher_id=fid), engine) == 0
    assert first.status.value == "finished" and second.status.value == "finished"
    lines = [r.getMessage() for r in caplog.records]
    held = lines.index(
        "job 1: its container is still on the engine; it has ended and holds nothing; it is"
        " removed (tried again every 1 s)"
    )
    freed = lines.index("job 1 (ended, #1): its container is removed at last")
    stopped = lines.index("worker: stopped")
    second_started = next(i for i, m in enumerate(lines) if m.startswith("job 2: started"))
    assert held < freed < stopped and second_started < freed
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})
