"""The fetcher's Docker image: built by `docker-build`, run against mock_api like a lab admin would."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.job.container import LABEL
from scripts import docker_tasks
from tests.helpers import IMAGE, TOKEN, Env, fetcher_id, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]
BASE = os.environ.get("FETCHER_TEST_PYTHON_IMAGE", "fetcher-test/pycopy:3.11")
TAG = "decode-fetcher:test"


@pytest.fixture(scope="module")
def fetcher_image(docker_client: Any) -> str:
    try:
        docker_client.images.get(BASE)
    except Exception as exc:
        pytest.fail(f"base image {BASE} missing ({exc}); scripts/test.sh builds it")
    assert docker_tasks.build(["--base", BASE, "--tag", TAG]) == 0
    labels = docker_client.images.get(TAG).labels
    assert labels["org.opencontainers.image.version"] == docker_tasks.version()
    return TAG


@pytest.fixture
def fetcher_container(engine: Any, fetcher_image: str, env: Env) -> Iterator[Any]:
    """The image run as the README says: the socket, the base path mounted, PATH_HOST_BASE set."""
    container = engine.containers.run(
        fetcher_image,
        ["run", "--exit-when-idle"],
        detach=True,
        network_mode="host",
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(env.base): {"bind": "/data", "mode": "rw"},
        },
        environment={
            "API_URL": env.mock.url,
            "ACCESS_TOKEN": TOKEN,
            "PATH_BASE": "/data",
            "PATH_HOST_BASE": str(env.base),
            "TIMEOUT_JOB": "0.5",
            "TIMEOUT_STATUS": "1",
            "SHM_SIZE": "64m",
            "JOB_DEFAULT_MEMORY_MB": "64",
            "FETCHER_ID": fetcher_id("image"),
        },
    )
    yield container
    container.remove(force=True)


def test_image_has_no_build_tools_and_shows_its_version(engine: Any, fetcher_image: str) -> None:
    out = engine.containers.run(fetcher_image, ["--version"], remove=True).decode()
    assert out.strip() == f"fetcher {docker_tasks.version()}"
    listing = engine.containers.run(
        fetcher_image,
        remove=True,
        entrypoint=["sh", "-c", "ls /opt/fetcher/bin; command -v poetry gcc || true"],
    ).decode()
    assert "fetcher" in listing and "poetry" not in listing and "gcc" not in listing


def test_image_processes_a_job_with_path_host_base(env: Env, fetcher_container: Any) -> None:
    fid = env.input_file("user1/in/data.txt", b"hello from the store\n")
    job = env.submit(
        ["cat /files/in/data.txt > /files/output/copy.txt"],
        files_down={"in/data.txt": fid, "output/.k": fid},
    )
    result = fetcher_container.wait(timeout=120)
    logs = fetcher_container.logs().decode()
    assert result["StatusCode"] == 0, logs
    assert job.status.value == "finished", logs
    assert any(u["filename"] == "copy.txt" for u in job.uploads)
    assert "reported finished" in logs and TOKEN not in logs


def test_docker_stop_of_the_fetcher_ends_cleanly_within_its_default_grace(
    env: Env, engine: Any, fetcher_container: Any
) -> None:
    job = env.submit(["sleep 300"])
    wait_for(lambda: job.status.value == "running", 60, "job running")
    started = time.monotonic()
    subprocess.run(
        [
            "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker",
            "stop",
            fetcher_container.id,
        ],
        check=True,
        capture_output=True,
    )  # default grace: 10 s, then SIGKILL
    elapsed = time.monotonic() - started
    fetcher_container.reload()
    assert fetcher_container.attrs["State"]["ExitCode"] == 0, fetcher_container.logs().decode()
    assert elapsed < 10, f"docker stop took {elapsed:.1f} s (it was SIGKILLed)"
    assert job.status.value == "error" and job.history[-1]["runtime_details"] == "worker shut down"
    assert not engine.containers.list(
        all=True, filters={"label": f"{LABEL}.id={fetcher_id('image')}"}
    )


def test_docker_run_stop_and_cleanup_scripts(env: Env, engine: Any, fetcher_image: str) -> None:
    # Given an .env as a lab admin writes it, and the image built by docker-build
    env_file = env.root / ".env"
    env_file.write_text(
        f"API_URL={env.mock.url}\nACCESS_TOKEN={TOKEN}\nTIMEOUT_JOB=0.5\nSHM_SIZE=64m\n"
        "JOB_DEFAULT_MEMORY_MB=64\nFETCHER_ID=" + fetcher_id("scripted") + "\n"
    )
    job = env.submit(["echo via docker-run"])
    # When docker-run starts it (host network here: the mock listens on 127.0.0.1 only)
    rc = docker_tasks.run(
        [
            "--env-file",
            str(env_file),
            "--path-base",
            str(env.base),
            "--no-gpus",
            "--image",
            fetcher_image,
            "--name",
            "decode-fetcher-test",
            "--docker-arg=--network=host",
        ]
    )
    try:
        assert rc == 0
        wait_for(lambda: job.status.value == "finished", 60, "job finished via docker-run")
        daemon = engine.containers.get("decode-fetcher-test")
        assert daemon.attrs["HostConfig"]["Binds"] == [
            "/var/run/docker.sock:/var/run/docker.sock",
            f"{env.base}:/data",
        ]
        assert f"PATH_HOST_BASE={env.base}" in daemon.attrs["Config"]["Env"]
        # Then docker-stop stops every fetcher container cleanly
        assert docker_tasks.stop([]) == 0
        assert not engine.containers.list(all=True, filters={"label": docker_tasks.DAEMON_LABEL})
    finally:
        subprocess.run(["/usr/bin/docker", "rm", "-f", "decode-fetcher-test"], capture_output=True)
    # And docker-cleanup removes the fetcher's images
    assert docker_tasks.cleanup([]) == 0
    assert not engine.images.list(name=docker_tasks.IMAGE)


def test_busybox_test_image_is_present(engine: Any) -> None:
    engine.images.get(IMAGE)
