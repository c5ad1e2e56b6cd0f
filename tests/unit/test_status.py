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


def test_status_shows_each_gpu_the_quarantine_and_how_to_lift_it() -> None:
    from fetcher.status import render

    gpu = {
        "uuid": "GPU-a",
        "index": 0,
        "model": "NVIDIA A100",
        "memory_mb": 40960,
        "parent": None,
        "state": "in use",
        "job_id": "42",
        "memory_used_mb": 10444,
        "utilization": 87,
        "power_w": 250.0,
    }
    broken = {
        **gpu,
        "uuid": "MIG-b",
        "parent": "GPU-x",
        "index": 1,
        "state": "quarantined",
        "why": "quarantined: critical Xid 79 reported by NVML",
        "job_id": None,
    }
    info = {
        "path_base": "/data",
        "daemon_running": True,
        "heartbeat_age_s": 1.0,
        "paused": None,
        "daemon": {
            "fetcher_id": "f",
            "gpu_states": [gpu, broken],
            "quarantined": {"MIG-b": "critical Xid 79", "box": "3 jobs in a row failed"},
            "staged": 1,
        },
        "running": [],
        "reports_pending": [],
        "recent": [],
    }
    lines = render(info).splitlines()
    assert "gpus:" in lines
    assert (
        "  gpu GPU-a (GPU 0, NVIDIA A100, 40 GiB): in use by job 42, 87 % util, 10.2 GiB used, 250 W"
        in lines
    )
    assert (
        "  gpu MIG-b (MIG instance of GPU 1, NVIDIA A100, 40 GiB): quarantined: critical Xid 79"
        " reported by NVML (lift: fetcher gpu release MIG-b)" in lines
    )
    assert "box quarantined: 3 jobs in a row failed (lift: fetcher gpu release box)" in lines
    assert "staged ahead: 1 job(s) waiting for their GPU" in lines


def test_status_of_a_paused_fetcher_says_who_why_and_how_to_resume() -> None:
    from fetcher.status import render

    info = {
        "path_base": "/data",
        "daemon_running": False,
        "heartbeat_age_s": None,
        "paused": "paused by root since 2026-12-03 10:00:00: driver update",
        "daemon": {},
        "running": [],
        "reports_pending": [],
        "recent": [],
    }
    assert (
        "paused by root since 2026-12-03 10:00:00: driver update (`fetcher resume` to claim again)"
        in render(info).splitlines()
    )
