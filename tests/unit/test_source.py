"""The loop's view of the API and the state: when it claims, and when it pauses."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest


def test_no_claim_while_path_base_has_too_little_free_space(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil
    from types import SimpleNamespace
    from typing import Any

    from fetcher import source as source_module
    from fetcher.models import ClaimOffer, ClaimResult
    from fetcher.quarantine import Quarantine
    from fetcher.statedir import StateDir

    asked: list[ClaimOffer] = []

    def claim_jobs(offer: ClaimOffer, **_: Any) -> ClaimResult:
        asked.append(offer)
        return ClaimResult()

    api = SimpleNamespace(claim_jobs=claim_jobs)
    settings = SimpleNamespace(
        min_free_disk_mb=1024, path_base=tmp_path, state_dir=StateDir.of(tmp_path)
    )
    deps: Any = SimpleNamespace(
        settings=settings,
        api=api,
        metrics=SimpleNamespace(claim_succeeded=lambda: None, set_claims_paused=lambda _r: None),
        quarantine=Quarantine(3),
        gpus=None,
    )
    source = source_module.ApiJobSource(deps, None, None)  # type: ignore[arg-type]
    free = {"mb": 100}
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _p: SimpleNamespace(free=free["mb"] * 2**20, total=0, used=0)
    )
    offer = ClaimOffer(memory=1000, cpu_cores=1)
    why = "100 MB free under PATH_BASE (MIN_FREE_DISK_MB=1024)"
    with caplog.at_level("INFO"):
        assert source.claim(offer, threading.Event()).paused == why
        assert source.claim(offer, threading.Event()).paused == why
        assert asked == []  # the API was not asked
        assert source.paused == why  # shown by `fetcher status`
        free["mb"] = 5000
        assert source.claim(offer, threading.Event()).paused is None
        assert asked == [offer] and source.paused is None

        def unreadable(_p: object) -> object:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(shutil, "disk_usage", unreadable)
        assert "PATH_BASE cannot be read" in (source.claim(offer, threading.Event()).paused or "")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"worker: claiming no job: {why}",
        "worker: claiming again (5000 MB free under PATH_BASE)",
        "worker: claiming no job: PATH_BASE cannot be read: [Errno 13] Permission denied",
    ]


def test_each_staged_job_not_started_yet_keeps_its_own_room_on_the_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil
    from types import SimpleNamespace
    from typing import Any

    from fetcher import source as source_module
    from fetcher.gpu.nvml import Gpu
    from fetcher.host import Host
    from fetcher.models import ClaimOffer, ClaimResult, HardwareSpecs
    from fetcher.pool import Allocation, ResourcePool
    from fetcher.quarantine import Quarantine
    from fetcher.statedir import StateDir

    # Given STAGE_AHEAD on two GPUs, each busy with a job, and PATH_BASE with room for exactly
    # one staged job's inputs (STAGE_AHEAD_DISK_MB) beside MIN_FREE_DISK_MB
    asked: list[ClaimOffer] = []

    def claim_jobs(offer: ClaimOffer, **_: Any) -> ClaimResult:
        asked.append(offer)
        return ClaimResult()

    settings = SimpleNamespace(
        min_free_disk_mb=1024,
        stage_ahead_disk_mb=10240,
        path_base=tmp_path,
        state_dir=StateDir.of(tmp_path),
    )
    deps: Any = SimpleNamespace(
        settings=settings,
        api=SimpleNamespace(claim_jobs=claim_jobs),
        metrics=SimpleNamespace(claim_succeeded=lambda: None, set_claims_paused=lambda _r: None),
        quarantine=Quarantine(3),
        gpus=None,
    )
    gpus = (Gpu(0, "GPU-0", "A100", 40960, "ampere"), Gpu(1, "GPU-1", "A100", 40960, "ampere"))
    pool = ResourcePool(Host(8, 8000, gpus), 2, stage_ahead=True)
    hw = HardwareSpecs(gpu_mem=1000, cpu_cores=1, memory=100)
    assert isinstance(pool.allocate("a", hw), Allocation)
    assert isinstance(pool.allocate("b", hw), Allocation)
    source = source_module.ApiJobSource(deps, pool, None)  # type: ignore[arg-type]
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda _p: SimpleNamespace(free=(1024 + 10240) * 2**20, total=0, used=0),
    )
    offer = ClaimOffer(memory=1000, cpu_cores=1)
    # When job 1 is claimed and staged behind job a (it has not written a byte yet)
    source.claim(offer, threading.Event(), ahead=True)
    assert len(asked) == 1
    assert isinstance(pool.allocate_behind("1", hw, "a"), Allocation)
    # Then no second job is staged behind job b on the same free space
    assert source.claim(offer, threading.Event(), ahead=True).jobs == {}
    assert len(asked) == 1, "the room for one staged job's inputs was promised to two"
    # and once job 1 has started (its inputs are on the disk, counted in the free space), the
    # next one is staged again
    assert pool.release("a") == ["1"]
    source.claim(offer, threading.Event(), ahead=True)
    assert len(asked) == 2
