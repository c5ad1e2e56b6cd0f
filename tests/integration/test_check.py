"""`fetcher check`: each problem it is meant to catch, each shown here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fetcher.check import run_checks
from mock_api.server import free_port
from tests.helpers import IMAGE, Env, FakeNvml

pytestmark = pytest.mark.docker


def check(settings: Any, engine: Any, **kw: Any) -> tuple[int, dict[str, str]]:
    lines: list[str] = []
    kw.setdefault("nvml", FakeNvml(fail_init=True))
    kw.setdefault("min_free_disk_mb", 1)
    rc = run_checks(settings, docker_client=engine, probe_image=IMAGE, out=lines.append, **kw)
    return rc, {line[5:].split(":", 1)[0]: line for line in lines}


def test_a_good_setup_is_all_ok(env: Env, engine: Any) -> None:
    rc, lines = check(env.settings(), engine)
    assert rc == 0, "\n".join(lines.values())
    assert (
        lines["api"].startswith("OK")
        and lines["login"].startswith("OK")
        and lines["docker"].startswith("OK")
    )
    assert lines["path"].startswith("OK") and lines["disk"].startswith("OK")
    assert lines["gpus"].startswith("WARN")


def test_an_unreachable_api_fails_the_api_check_naming_api_url(env: Env, engine: Any) -> None:
    rc, lines = check(env.settings(api_url=f"http://127.0.0.1:{free_port()}"), engine)
    assert rc == 1 and lines["api"].startswith("FAIL") and "API_URL" in lines["api"]


def test_a_refused_token_fails_the_login_check_without_showing_it(env: Env, engine: Any) -> None:
    rc, lines = check(env.settings(access_token="not-the-token"), engine)
    assert rc == 1 and lines["login"].startswith("FAIL") and "ACCESS_TOKEN" in lines["login"]
    assert "not-the-token" not in lines["login"]


def test_no_docker_engine_fails_the_docker_check(env: Env) -> None:
    import docker

    dead = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
    rc, lines = check(env.settings(), dead)
    assert rc == 1 and lines["docker"].startswith("FAIL") and "docker.sock" in lines["docker"]


def test_gpus_without_the_nvidia_runtime_fail_the_gpu_runtime_check(env: Env, engine: Any) -> None:
    nvml = FakeNvml([("GPU-1", "NVIDIA T4", 15360, 6)])
    rc, lines = check(env.settings(), engine, nvml=nvml)
    assert rc == 1 and lines["gpus"].startswith("OK") and "T4" in lines["gpus"]
    assert (
        lines["gpu runtime"].startswith("FAIL")
        and "nvidia-container-toolkit" in lines["gpu runtime"]
    )


def test_too_little_free_disk_fails_the_disk_check(env: Env, engine: Any) -> None:
    rc, lines = check(env.settings(), engine, min_free_disk_mb=10**12)
    assert rc == 1 and lines["disk"].startswith("FAIL")


def test_a_path_host_base_that_is_not_the_host_side_of_path_base_fails_the_path_check(
    env: Env, engine: Any, tmp_path: Path
) -> None:
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    rc, lines = check(env.settings(path_host_base=wrong), engine)
    assert rc == 1 and lines["path"].startswith("FAIL") and "PATH_HOST_BASE" in lines["path"]
    assert not list((env.base / ".fetcher").glob("probe-*")), "the probe file is removed"


def test_a_missing_path_base_fails_the_path_check(env: Env, engine: Any, tmp_path: Path) -> None:
    rc, lines = check(env.settings(path_base=tmp_path / "nope"), engine)
    assert rc == 1 and lines["path"].startswith("FAIL") and "PATH_BASE" in lines["path"]
