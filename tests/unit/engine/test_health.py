"""EngineHealth: whether the engine answers, asked as the fetcher's client asks it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker

from fetcher.daemon import engine_health
from fetcher.engine.health import EngineHealth
from fetcher.recovery import ENGINE_LOST_KEY
from fetcher.store import JobStore


def test_an_engine_reached_over_tls_is_alive_while_it_answers(tls_engine: Any) -> None:
    # Given an engine the fetcher reaches over TLS, answering its pings
    assert tls_engine.ping()
    # Then EngineHealth does not take it for gone (its fresh client has the TLS settings)
    assert EngineHealth(tls_engine).alive()


def test_an_engine_that_does_not_answer_is_not_alive(tmp_path: Path) -> None:
    # Given a client of an engine whose socket nobody listens on (a stopped engine)
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/docker.sock", version="1.41")
    # Then it is not alive, asked twice
    assert not EngineHealth(client).alive(timeout_s=1.0, again_after_s=0.01)


def test_the_engine_lost_marker_goes_once_the_engine_is_back(tmp_path: Path) -> None:
    # Given the daemon's watch on its engine: the engine's loss is noted for crash recovery
    store = JobStore(tmp_path / "jobs.sqlite")
    engine = engine_health(object(), store)
    # When the engine goes away, the store says since when
    at = engine.lost("connection refused")
    assert store.get_meta(ENGINE_LOST_KEY) == at
    # When it comes back (a restart, a blip), the marker goes: a container that ends later ends
    # on its own, and a recovery after a kill -9 reports its exit
    engine.back()
    assert store.get_meta(ENGINE_LOST_KEY) is None
