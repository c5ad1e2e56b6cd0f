"""Crash recovery's engine-lost marker: kept until every job of the earlier life is settled; a
staged job whose container never started is handed back whatever ON_WORKER_FAILURE says."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fetcher import recovery
from fetcher.lifecycle import Stage
from fetcher.models import JobSpecs, JobStatus
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


def settle_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: Stage) -> JobStatus:
    """Job 6 was at `stage` when the fetcher was killed, its container created and never
    started; the server still has it `preprocessing`; ON_WORKER_FAILURE=error. What is sent."""
    store = JobStore(tmp_path / "jobs.sqlite")
    spec = JobSpecs.model_validate({"handler": {"image_url": "img"}})
    store.claimed("6", spec.model_dump(mode="json"), name=None, cpu_cores=1, memory_mb=100, gpus=[])
    store.started("6", "c6")
    store.stage("6", stage)
    sent: list[JobStatus] = []
    created = SimpleNamespace(status="created", short_id="c6", id="c6", remove=lambda **_k: None)
    deps: Any = SimpleNamespace(
        store=store,
        settings=SimpleNamespace(on_worker_failure="error"),
        deliverer=SimpleNamespace(submit=lambda _j, s, _d, verify=False: sent.append(s)),
    )
    monkeypatch.setattr(recovery, "clean", lambda *_a: None)
    view = recovery.ServerView(True, JobStatus.preprocessing)
    monkeypatch.setattr(recovery, "ask_server", lambda *_a: view)
    assert recovery.settle(deps, "6", store.get("6"), created, threading.Event()) is None
    return sent[0]


def test_after_kill_9_a_staged_job_never_started_is_handed_back_whatever_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a staged job (its container created, waiting for its GPU) when the fetcher was killed
    # Then it goes back to the queue: it never ran, nobody's fault (`error` would end it)
    assert settle_created(tmp_path, monkeypatch, Stage.staged) == JobStatus.queued


def test_after_kill_9_a_job_killed_as_its_container_started_follows_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job (not staged) killed between its container's create and start: the worker died
    # under it, this worker's failure; ON_WORKER_FAILURE=error says `error`
    assert settle_created(tmp_path, monkeypatch, Stage.starting) == JobStatus.error
