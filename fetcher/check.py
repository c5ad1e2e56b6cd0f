"""`fetcher check`: a doctor. Each line says OK, or what is wrong and what to do."""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from fetcher.api.client import WorkerApi
from fetcher.api.http import Http, Transient
from fetcher.errors import ApiError, AuthError, FetcherError, JobGone
from fetcher.gpu.nvml import Gpu
from fetcher.host import detect_gpus
from fetcher.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Line:
    level: str  # OK, WARN, FAIL
    subject: str
    text: str

    def __str__(self) -> str:
        return f"{self.level:<4} {self.subject}: {self.text}"


def check_api(settings: Settings) -> Line:
    http = Http(
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
    )
    try:
        http.send("GET", f"{settings.api_url}/access_info", what="access_info")
    except (Transient, ApiError) as exc:
        return Line(
            "FAIL", "api", f"cannot reach {settings.api_url} ({exc}); check API_URL and the network"
        )
    return Line("OK", "api", f"{settings.api_url} answers")


def check_login(settings: Settings) -> Line:
    what = f"user {settings.username}" if settings.username else "ACCESS_TOKEN"
    try:
        WorkerApi.from_settings(settings.model_copy(update={"api_retry_s": 3.0})).get_status(
            "0", retry_s=3
        )
    except JobGone:
        return Line("OK", "login", f"{what} accepted by the API")
    except AuthError as exc:
        hint = (
            "the account must be in the 'workers' group"
            if exc.status_code == 403
            else "check ACCESS_TOKEN, or USERNAME/PASSWORD (and COGNITO_ENDPOINT)"
        )
        return Line("FAIL", "login", f"{what} refused: {exc}; {hint}")
    except (ApiError, FetcherError) as exc:
        return Line("FAIL", "login", f"could not check {what}: {exc}")
    return Line("OK", "login", f"{what} accepted by the API")


def _probe_once(client: Any, image: str, host_dir: str, name: str, token: str) -> str:
    """What a container mounting `host_dir` sees in the probe file."""
    try:
        out = client.containers.run(
            image,
            ["cat", f"/files/{name}"],
            remove=True,
            volumes={host_dir: {"bind": "/files", "mode": "ro"}},
            labels={"org.decode-opencloud.fetcher.check": "1"},
        )
    except docker.errors.ContainerError as exc:
        return f"nothing ({exc.stderr.decode(errors='replace').strip() if exc.stderr else exc})"
    # `cat` found the file of this random name: the container sees PATH_BASE. Its output, read
    # from the engine's log right after the exit, can come back empty (seen twice in CI); only
    # output that differs says it is another file.
    text = out.decode(errors="replace").strip()
    return token if text in ("", token) else text


def check_probe_mount(settings: Settings, client: Any, image: str) -> Line:
    """The mistake new users make: PATH_HOST_BASE is not the host side of PATH_BASE."""
    state = settings.state_dir.path
    name = f"probe-{secrets.token_hex(4)}"
    token = secrets.token_hex(8)
    try:
        state.mkdir(parents=True, exist_ok=True)
        (state / name).write_text(token)
    except OSError as exc:
        return Line("FAIL", "path", f"cannot write under PATH_BASE {settings.path_base}: {exc}")
    host_dir = str(settings.host_base / ".fetcher")
    seen = ""
    try:
        for _ in range(2):  # once more after a moment: a fresh mount can lag on a busy engine
            seen = _probe_once(client, image, host_dir, name, token)
            if seen == token:
                break
            time.sleep(0.5)
    except docker.errors.ImageNotFound:
        return Line(
            "WARN",
            "path",
            f"probe image {image} not present; set PROBE_IMAGE to a local image with `cat`",
        )
    except docker.errors.APIError as exc:
        return Line("FAIL", "path", f"probe container failed: {exc.explanation}")
    finally:
        (state / name).unlink(missing_ok=True)
    if seen != token:
        log.warning("check: the probe container saw %s instead of the probe file", seen[:200])
        return Line(
            "FAIL",
            "path",
            f"a container mounting {settings.host_base} does not see the files the fetcher writes in "
            f"{settings.path_base}: set PATH_HOST_BASE to the host directory mounted at PATH_BASE "
            "(e.g. docker run -v /srv/fetcher:/data -e PATH_BASE=/data -e PATH_HOST_BASE=/srv/fetcher)",
        )
    return Line(
        "OK",
        "path",
        f"jobs will see {settings.path_base} at /files (host side {settings.host_base})",
    )


def check_docker(client: Any) -> tuple[Line, Any]:
    """The engine's version line, and the client (None when the engine cannot be reached)."""
    try:
        client = client or docker.from_env()
        version = client.version()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return Line(
            "FAIL",
            "docker",
            f"cannot reach the Docker engine ({exc}); start it, or mount "
            "/var/run/docker.sock into the fetcher's container",
        ), None
    text = f"engine {version.get('Version')} (API {version.get('ApiVersion')})"
    return Line("OK", "docker", text), client


def check_gpus(gpus: list[Gpu], client: Any) -> list[Line]:
    if not gpus:
        return [
            Line(
                "WARN",
                "gpus",
                "no NVIDIA GPU visible through NVML: only CPU jobs will be claimed "
                "(in a container: run it with --gpus all)",
            )
        ]
    listed = ", ".join(f"{g.index}: {g.model} {g.memory_mb} MB {g.uuid}" for g in gpus)
    lines = [Line("OK", "gpus", listed)]
    if client is None:
        return lines
    if "nvidia" not in set(client.info().get("Runtimes") or {}):
        lines.append(
            Line(
                "FAIL",
                "gpu runtime",
                "the engine has no NVIDIA runtime: GPU jobs will fail with "
                "'could not select device driver'; install nvidia-container-toolkit "
                "and restart dockerd",
            )
        )
    else:
        lines.append(Line("OK", "gpu runtime", "the engine has the nvidia runtime"))
    return lines


def check_disk(settings: Settings, min_free_disk_mb: int) -> Line:
    free_mb = shutil.disk_usage(settings.path_base).free // (1024 * 1024)
    if free_mb >= min_free_disk_mb:
        return Line("OK", "disk", f"{free_mb} MB free under {settings.path_base}")
    return Line(
        "FAIL",
        "disk",
        f"{free_mb} MB free under {settings.path_base}; no job is claimed below"
        f" MIN_FREE_DISK_MB ({min_free_disk_mb} MB): free some space or lower it",
    )


def run_checks(
    settings: Settings,
    *,
    docker_client: Any = None,
    nvml: Any = None,
    min_free_disk_mb: int | None = None,
    probe_image: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Print one line per check; 0 if nothing failed, else 1. The disk is held to the daemon's
    own threshold (MIN_FREE_DISK_MB) unless `min_free_disk_mb` says otherwise."""
    lines = [check_api(settings)]
    if lines[0].level == "OK":
        lines.append(check_login(settings))
    docker_line, client = check_docker(docker_client)
    lines.append(docker_line)
    lines += check_gpus(detect_gpus(nvml), client)
    if settings.path_base.is_dir():
        threshold = settings.min_free_disk_mb if min_free_disk_mb is None else min_free_disk_mb
        lines.append(check_disk(settings, threshold))
        if client is not None:
            lines.append(check_probe_mount(settings, client, probe_image or settings.probe_image))
    else:
        lines.append(
            Line(
                "FAIL",
                "path",
                f"PATH_BASE {settings.path_base} is not a directory; create it or fix PATH_BASE",
            )
        )
    for line in lines:
        out(str(line))
    return 1 if any(line.level == "FAIL" for line in lines) else 0
