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
