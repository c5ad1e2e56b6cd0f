"""Whether the Docker engine answers, and the one place that says so in the log: one WARNING when
it goes away (a restart: a package upgrade, `systemctl restart docker`), one INFO when it is back.

What an engine restart looks like from here (measured on the real engine, tests/helpers/private_engine.py):
on SIGTERM, dockerd closes its API socket first, then stops every container (the job gets SIGTERM,
exit code 143), then exits. A `wait()` already under way is answered with that exit code as if the
job had ended on its own: no field of the container tells the engine's stop from the job's exit.
What does tell it: the engine no longer answers a fresh connection at that moment (`alive`). With
live-restore, containers survive the restart; the wait and the attach stream break instead, and
work again once the engine is back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import docker
import requests

log = logging.getLogger(__name__)

# What a job ended by an engine restart is handed back with (its run's wait, or the recovery)
ENGINE_STOPPED = "the Docker engine restarted and stopped the job's container (exit code {code})"
CLOCK_SLACK_S = 2.0  # the engine's clock against ours


class EngineHealth:
    def __init__(self, client: Any, on_lost: Any = None, on_back: Any = None) -> None:
        self.client = client
        self.on_lost = on_lost  # told (Unix time) when the engine goes away (kept for recovery)
        self.on_back = on_back  # told when it answers again (what was kept is stale)
        self.lost_at: float | None = None
        self._lock = threading.Lock()

    def alive(self, timeout_s: float = 3.0, *, again_after_s: float = 0.25) -> bool:
        """The engine answers `/_ping` on a new connection now (a pooled one may still be answered
        by an engine that is shutting down), reached as the client reaches it (its socket, or its
        TLS settings). One failed ping is asked again once, `again_after_s` later: a stopping
        engine fails both, a blip of the network does not decide a job's fate alone."""
        api = getattr(self.client, "api", None)
        if api is None or getattr(api, "base_url", None) is None:  # a stand-in: nothing to ask
            return True
        if _ping(api, timeout_s):
            return True
        time.sleep(again_after_s)
        return _ping(api, timeout_s)

    def live_restore(self) -> bool:
        """Whether the engine keeps containers running through its own restart."""
        try:
            return bool(self.client.info().get("LiveRestoreEnabled"))
        except (docker.errors.DockerException, requests.RequestException):
            return False

    def lost(self, why: object) -> float:
        """The engine did not answer; returns since when it has not (logged once)."""
        with self._lock:
            first = self.lost_at is None
            if first:
                self.lost_at = time.time()
            since = self.lost_at
        assert since is not None
        if first:
            log.warning(
                "docker engine: not answering (%s); a restart? jobs wait for it to come back", why
            )
            if self.on_lost is not None:
                self.on_lost(since)
        return since

    def back(self) -> None:
        """The engine answered again (logged once after it was lost)."""
        with self._lock:
            was = self.lost_at
            self.lost_at = None
        if was is not None:
            log.info("docker engine: answering again after %.0f s", time.time() - was)
            if self.on_back is not None:
                self.on_back()


def _ping(api: Any, timeout_s: float) -> bool:
    try:
        fresh = _fresh_client(api, timeout_s)
        if fresh is None:  # ssh, npipe: asked through the client's own connections
            return bool(api.get(f"{api.base_url}/_ping", timeout=timeout_s).ok)
        try:
            return bool(fresh.ping())
        finally:
            fresh.close()
    except (docker.errors.DockerException, requests.RequestException, OSError):
        return False


def _fresh_client(api: Any, timeout_s: float) -> Any:
    """A new client that reaches the same engine the same way: a unix socket by its path (docker-py
    names its base URL `http+docker://localhost` and keeps the path in its adapter); TCP with the
    TLS settings docker-py put on the session (`verify`, `cert`). None for transports that cannot
    be copied (ssh, npipe)."""
    base_url = str(api.base_url)
    if base_url.startswith("http+docker://"):
        socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
        if not base_url.startswith("http+docker://localhost") or not socket_path:
            return None
        return docker.APIClient(
            base_url=f"unix://{socket_path}", version=api.api_version, timeout=timeout_s
        )
    fresh = docker.APIClient(base_url=base_url, version=api.api_version, timeout=timeout_s)
    fresh.verify = api.verify
    fresh.cert = api.cert
    return fresh


def finished_at(container: Any) -> float | None:
    """When the container ended, as Unix time; None when it has not or cannot be told."""
    try:
        container.reload()
    except (docker.errors.DockerException, requests.RequestException):
        return None
    text = str(container.attrs.get("State", {}).get("FinishedAt") or "")
    if not text or text.startswith("0001-"):
        return None
    return parse_docker_time(text)


def ended_while_away(container: Any, lost_at: float, back_at: float = float("inf")) -> bool:
    """Whether `container` ended between the moment the engine was seen to go away and the
    moment it answered again (with a little slack for the two clocks)."""
    end = finished_at(container)
    return end is not None and lost_at - CLOCK_SLACK_S <= end <= back_at + CLOCK_SLACK_S


def parse_docker_time(text: str) -> float | None:
    """Docker's RFC 3339 time with nanoseconds (`2026-12-03T10:22:01.123456789Z`) as Unix time."""
    from datetime import datetime

    main, _, rest = text.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits) :] if rest else text[len(main) :]
    try:
        base = datetime.fromisoformat(main + (zone.replace("Z", "+00:00") or "+00:00"))
    except ValueError:
        return None
    return base.timestamp() + (int(digits[:9].ljust(9, "0")) / 1e9 if digits else 0.0)
