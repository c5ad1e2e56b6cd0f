"""JobContainer.wait without an engine's real restart: a job's own end is reported as such, the
output follower ends with the container."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests

from fetcher.cancel import Cancel
from fetcher.engine.container import ContainerOptions, JobContainer
from fetcher.engine.health import EngineHealth
from fetcher.errors import WorkerTrouble


class _ExitedContainer:
    """A container whose engine wait answers `code` at once (it ended on its own)."""

    id = "c" * 64
    short_id = "c" * 12

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.attrs: dict[str, Any] = {"State": {"OOMKilled": False}}

    def wait(self) -> dict[str, Any]:
        return {"StatusCode": self.code}

    def reload(self) -> None:
        pass


def test_a_job_that_exits_0_on_a_tls_engine_is_finished_not_handed_back(tls_engine: Any) -> None:
    # Given a job's container on an engine reached over TLS, which ends on its own with 0
    job = JobContainer(tls_engine, "7", "fid", ContainerOptions(), engine=EngineHealth(tls_engine))
    job.container = _ExitedContainer(0)
    # When the fetcher waits for it
    # Then its exit is reported (not "the Docker engine restarted and stopped the job's
    # container (exit code 0)": that would hand back every job of such a box)
    result = job.wait(Cancel())
    assert result.exit_code == 0


class _WaitBrokeOnceContainer(_ExitedContainer):
    """Its engine wait breaks once (a reset connection: a proxy's idle timeout, a blip), then
    answers `code`; the job ended on its own an hour after the break."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.broke = False
        end = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.attrs["State"]["FinishedAt"] = end

    def wait(self) -> dict[str, Any]:
        if not self.broke:
            self.broke = True
            raise requests.exceptions.ConnectionError("Connection aborted")
        return super().wait()


def test_a_job_that_ends_on_its_own_long_after_its_wait_broke_once_is_reported() -> None:
    # Given an engine without live-restore that answers throughout, and a job whose wait broke
    # once (the engine did not restart: the container ran on) and which exited 0 an hour later
    client = SimpleNamespace(info=lambda: {"LiveRestoreEnabled": False})
    job = JobContainer(client, "9", "fid", ContainerOptions(), engine=EngineHealth(client))
    job.container = _WaitBrokeOnceContainer(0)
    # Then its exit is reported: it ended long after the engine answered again
    assert job.wait(Cancel()).exit_code == 0


class _VanishedContainer:
    """A container someone else removed: every call answers 404."""

    id = "d" * 64
    short_id = "d" * 12
    attrs: dict[str, Any] = {}

    def __init__(self) -> None:
        self.reloads = 0

    def wait(self) -> dict[str, Any]:
        raise docker.errors.NotFound("No such container")

    def reload(self) -> None:
        self.reloads += 1
        raise docker.errors.NotFound("No such container")

    def logs(self, **_kw: Any) -> Any:
        return iter(())


def test_the_output_follower_ends_when_the_container_disappears() -> None:
    # Given a job whose container is removed by someone else while the fetcher follows it
    job = JobContainer(object(), "8", "fid", ContainerOptions(), engine=EngineHealth(object()))
    gone = _VanishedContainer()
    job.container = gone
    job.follow_logs(None)
    # When the wait finds it gone (WorkerTrouble: the job is handed back)
    with pytest.raises(WorkerTrouble, match="disappeared"):
        job.wait(Cancel())
    # Then its output follower ends (it does not ask the engine once a second for ever)
    assert job.follower is not None
    job.follower._reader.join(5)
    assert not job.follower._reader.is_alive(), f"still polling: {gone.reloads} reloads"


class _StoppedInTheOutage(_ExitedContainer):
    """Its wait breaks (the engine goes away: a restart without live-restore) and the engine's
    stop ends it then (exit 143); the next wait, once the engine is back, answers that code."""

    def __init__(self) -> None:
        super().__init__(143)
        self.broke = False

    def wait(self) -> dict[str, Any]:
        if not self.broke:
            self.broke = True
            end = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            self.attrs["State"]["FinishedAt"] = end
            raise requests.exceptions.ConnectionError("Connection aborted")
        return super().wait()


def test_a_job_the_engine_stopped_while_it_was_away_is_handed_back() -> None:
    # Given an engine without live-restore whose restart stopped the job's container while the
    # fetcher's wait was broken
    client = SimpleNamespace(info=lambda: {"LiveRestoreEnabled": False})
    job = JobContainer(client, "9", "fid", ContainerOptions(), engine=EngineHealth(client))
    job.container = _StoppedInTheOutage()
    # Then the job is handed back (the engine's fault, passing), not failed with exit 143
    with pytest.raises(WorkerTrouble, match="engine restarted") as info:
        job.wait(Cancel())
    assert not info.value.lasting
