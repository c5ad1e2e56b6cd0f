"""Crash recovery's engine-lost marker: kept until every job of the earlier life is settled."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fetcher.recovery import ENGINE_LOST_KEY, recover
from fetcher.store import JobStore


def deps_for(tmp_path: Path, store: JobStore) -> Any:
    docker = SimpleNamespace(containers=SimpleNamespace(list=lambda **_kw: []))
    settings = SimpleNamespace(path_base=tmp_path / "jobs", keep_failed_job_dirs=True)
    return SimpleNamespace(docker=docker, store=store, fetcher_id="f", settings=settings)


def test_the_engine_lost_marker_stays_when_recovery_stops_part_way(tmp_path: Path) -> None:
    # Given a store with the engine's loss noted and a job of the earlier life not settled
    store = JobStore(tmp_path / "jobs.sqlite")
    store.set_meta(ENGINE_LOST_KEY, 1000.0)
    store.claimed("5", {}, name=None, cpu_cores=1, memory_mb=100, gpus=[])
    stop = threading.Event()
    stop.set()
    # When recovery is stopped before it settles that job
    recover(deps_for(tmp_path, store), stop)
    # Then the marker is kept for the next start (or the job's container, stopped by the
    # engine, would be taken for one that ended on its own and reported `error`)
    assert store.get_meta(ENGINE_LOST_KEY) == 1000.0


def test_the_engine_lost_marker_goes_once_recovery_settled_everything(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    store.set_meta(ENGINE_LOST_KEY, 1000.0)
    recover(deps_for(tmp_path, store), threading.Event())
    assert store.get_meta(ENGINE_LOST_KEY) is None
