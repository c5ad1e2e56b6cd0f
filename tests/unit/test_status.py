"""`fetcher status`: what it shows of the daemon."""

from __future__ import annotations


def test_status_shows_why_claiming_is_paused() -> None:
    from fetcher.status import render

    info = {
        "path_base": "/data",
        "daemon_running": True,
        "heartbeat_age_s": 1.0,
        "daemon": {"fetcher_id": "f", "claims_paused": "100 MB free under PATH_BASE"},
        "running": [],
        "reports_pending": [],
        "recent": [],
    }
    assert "claiming paused: 100 MB free under PATH_BASE" in render(info).splitlines()
    info["daemon"] = {"fetcher_id": "f", "claims_paused": None}
    assert "claiming paused" not in render(info)
