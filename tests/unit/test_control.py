"""What an admin asks of the daemon through the state directory: pause and resume (kept across
restarts), and lifting quarantines; through the CLI, as on the host or through `docker exec`."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher import control
from fetcher.cli import main
from fetcher.statedir import StateDir


def test_pause_is_kept_until_resume_and_says_who_and_why(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path)
    assert control.paused(state) is None
    pause = control.pause(state, "driver update")
    again = control.paused(state)
    assert again is not None and again.reason == "driver update" and again.by == pause.by
    assert "driver update" in again.describe()
    assert control.resume(state) is True
    assert control.paused(state) is None and control.resume(state) is False


def test_a_pause_file_that_cannot_be_read_still_pauses(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path)
    state.path.mkdir(parents=True)
    state.paused.write_text("{not json")
    pause = control.paused(state)
    assert pause is not None and "cannot be read" in pause.reason


def test_release_requests_merge_until_the_daemon_takes_them(tmp_path: Path) -> None:
    state = StateDir.of(tmp_path)
    control.request_release(state, ["GPU-a"])
    control.request_release(state, ["box"])
    assert control.take_release(state) == ["GPU-a", "box"]
    assert control.take_release(state) is None  # taken once
    control.request_release(state, ["GPU-a"])
    control.request_release(state, None)
    assert control.take_release(state) == ["*"]


def test_the_cli_pauses_resumes_and_releases_by_path_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = str(tmp_path)
    assert main(["pause", "--path-base", base, "--reason", "demo at 3"]) == 0
    assert "demo at 3" in capsys.readouterr().out
    assert control.paused(StateDir.of(tmp_path)) is not None
    assert main(["resume", "--path-base", base]) == 0
    assert "claiming again" in capsys.readouterr().out
    assert main(["gpu", "release", "--path-base", base, "GPU-x"]) == 0
    assert control.take_release(StateDir.of(tmp_path)) == ["GPU-x"]
    assert main(["gpu", "release", "--path-base", base, "all"]) == 0
    assert control.take_release(StateDir.of(tmp_path)) == ["*"]


def test_a_paused_box_claims_nothing_says_why_and_claims_again_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    from types import SimpleNamespace
    from typing import Any

    from fetcher.models import ClaimOffer, ClaimResult
    from fetcher.quarantine import Quarantine
    from fetcher.source import ApiJobSource

    asked: list[ClaimOffer] = []
    paused_by: list[str | None] = []

    def claim_jobs(offer: ClaimOffer, **_: Any) -> ClaimResult:
        asked.append(offer)
        return ClaimResult()

    settings = SimpleNamespace(
        min_free_disk_mb=0, path_base=tmp_path, state_dir=StateDir.of(tmp_path)
    )
    deps: Any = SimpleNamespace(
        settings=settings,
        api=SimpleNamespace(claim_jobs=claim_jobs),
        metrics=SimpleNamespace(claim_succeeded=lambda: None, set_claims_paused=paused_by.append),
        quarantine=Quarantine(3),
        gpus=None,
    )
    source = ApiJobSource(deps, None, None)  # type: ignore[arg-type]
    offer = ClaimOffer(memory=1000, cpu_cores=1)
    control.pause(settings.state_dir, "demo at 3")
    with caplog.at_level("INFO"):
        result = source.claim(offer, threading.Event())
        assert result.paused is not None and "demo at 3" in result.paused
        assert asked == [] and paused_by[-1] == "admin"
        control.resume(settings.state_dir)
        assert source.claim(offer, threading.Event()).paused is None
    assert asked == [offer] and paused_by[-1] is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("worker: claiming no job: paused by ") and "demo at 3" in lines[0]
    assert lines[1] == "worker: claiming again"
