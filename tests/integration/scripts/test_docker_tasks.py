"""The fetcher's Docker image: built by `docker-build`, run against mock_api like a lab admin would."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetcher.demo import DEMO_DIR, DEMO_JOB_REPO, demo_fetcher_id
from fetcher.engine.container import LABEL, LABEL_ID
from scripts import docker_tasks
from tests.conftest import FETCHER_BASE_IMAGE
from tests.helpers import IMAGE, TOKEN, Env, fetcher_id, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
# The README's demo command, exactly: the job directories are the same path on the host and inside.
DEMO_COMMAND = [
    DOCKER,
    "run",
    "--rm",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock",
    "-v",
    "/tmp/fetcher-demo:/tmp/fetcher-demo",
    "decode-fetcher",
    "demo",
]


def run_fetcher_container(engine: Any, fetcher_image: str, env: Env, *command: str) -> Any:
    """The image run as the README says: the socket, the base path mounted, PATH_HOST_BASE set."""
    return engine.containers.run(
        fetcher_image,
        list(command),
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


@pytest.fixture
def fetcher_container(engine: Any, fetcher_image: str, env: Env) -> Iterator[Any]:
    """A pilot (`run --exit-when-idle`) of the image."""
    container = run_fetcher_container(engine, fetcher_image, env, "run", "--exit-when-idle")
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


def test_fetcher_status_in_the_image_shows_the_running_job(
    env: Env, fetcher_container: Any
) -> None:
    import json

    job = env.submit(["sleep 6"], files_up={})
    wait_for(lambda: job.status.value == "running", 60, "the job running")
    time.sleep(1.5)
    # When a lab admin asks the fetcher's container what it is doing
    code, out = fetcher_container.exec_run(["fetcher", "status", "--json"])
    assert code == 0, out.decode()
    info = json.loads(out)
    # Then it names the job, its stage and container, and the daemon is alive
    [running] = info["running"]
    assert running["job_id"] == str(job.id) and running["stage"] == "running"
    assert running["container"] and info["daemon_running"] is True
    code, text = fetcher_container.exec_run(["fetcher", "status"])
    assert code == 0 and f'job {job.id} "test": running' in text.decode(), text.decode()
    assert fetcher_container.wait(timeout=120)["StatusCode"] == 0


def test_pause_and_resume_through_docker_exec(env: Env, engine: Any, fetcher_image: str) -> None:
    import json

    # Given the fetcher's container, a daemon (not a pilot), idle
    container = run_fetcher_container(engine, fetcher_image, env, "run")
    try:
        wait_for(
            lambda: container.exec_run(["fetcher", "status", "--json"])[0] == 0, 60, "its state"
        )
        # When the admin pauses it through `docker exec` and a job arrives
        code, out = container.exec_run(["fetcher", "pause", "--reason", "demo at 3"])
        assert code == 0 and "demo at 3" in out.decode(), out.decode()
        job = env.submit(["true"], files_up={})
        time.sleep(2)
        # Then nothing is claimed and `fetcher status` says why
        assert job.claims == []
        code, out = container.exec_run(["fetcher", "status", "--json"])
        assert code == 0 and "demo at 3" in (json.loads(out)["paused"] or "")
        # and after `fetcher resume` the job runs
        code, out = container.exec_run(["fetcher", "resume"])
        assert code == 0 and "claiming again" in out.decode()
        wait_for(lambda: job.status.value == "finished", 60, "the job after resume")
    finally:
        container.remove(force=True)


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
    assert job.status.value == "queued", job.history  # handed back: another worker runs it
    assert "worker shut down" in job.history[-1]["runtime_details"]
    assert not engine.containers.list(
        all=True, filters={"label": f"{LABEL}.id={fetcher_id('image')}"}
    )


def empty_demo_dir(engine: Any, image: str) -> None:
    """The demo's files belong to root (the fetcher's container wrote them): remove them from a
    container, so that this works for a test user who is not root too."""
    if DEMO_DIR.exists():
        engine.containers.run(
            image,
            entrypoint=["sh", "-c", "rm -rf /x/jobs /x/store /x/.demo.lock"],
            volumes={str(DEMO_DIR): {"bind": "/x", "mode": "rw"}},
            remove=True,
        )
        shutil.rmtree(DEMO_DIR, ignore_errors=True)  # the directory itself, where we may


def test_demo_command_runs_the_sample_job_on_the_hosts_engine(
    engine: Any, fetcher_image: str
) -> None:
    # Given the image docker-build made (`decode-fetcher` is its :latest tag; another test run on the
    # engine may have retagged it meanwhile) and no earlier demo
    engine.images.get(fetcher_image).tag(docker_tasks.IMAGE, "latest")
    empty_demo_dir(engine, fetcher_image)
    before = {i.id for i in engine.images.list(name=DEMO_JOB_REPO)}
    try:
        # When a lab admin runs the README's command
        started = time.monotonic()
        run = subprocess.run(DEMO_COMMAND, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - started
        out = run.stdout + run.stderr
        # Then the sample job ends finished, and the demo says where its outputs are
        assert run.returncode == 0, out
        assert "job 1: finished (exit_code: 0)" in run.stdout, out
        results = DEMO_DIR / "store/user1/results"
        assert f"outputs are in {results}:" in run.stdout, out
        assert "Traceback" not in out
        # And they are there on the host, at the same path
        # the upstream layout: <paths_upload[type]>/<files_up dir>/<file>
        history = results / "artifact/model/history.txt"
        assert history.read_text() == "epoch 1\nepoch 2\nepoch 3\n"
        assert "seed 42" in (results / "log/log/container.log").read_text()
        # And nothing of the job is left: no container, no job directory (only the fetcher's state)
        left = engine.containers.list(
            all=True, filters={"label": f"{LABEL_ID}={demo_fetcher_id(DEMO_DIR)}"}
        )
        assert not left, [c.name for c in left]
        assert [p.name for p in (DEMO_DIR / "jobs").iterdir()] == [".fetcher"]
        print(f"demo command: {elapsed:.1f} s")
    finally:
        empty_demo_dir(engine, fetcher_image)
        for image in engine.images.list(name=DEMO_JOB_REPO):
            if image.id not in before:
                engine.images.remove(image.id, force=True)


def test_a_failed_pip_install_fails_the_image_build(tmp_path: Path, engine: Any) -> None:
    # Given the Dockerfile with a wheelhouse that lacks what it must install
    context = tmp_path / "context"
    (context / "wheelhouse").mkdir(parents=True)
    shutil.copy(docker_tasks.ROOT / "Dockerfile", context)
    (context / "wheelhouse/requirements.txt").write_text("decode-fetcher==0.0.0\n")
    # When the image is built
    command = [DOCKER, "build", "--force-rm", "--target", "build"]
    build = subprocess.run(
        [*command, "--build-arg", f"PYTHON_IMAGE={FETCHER_BASE_IMAGE}", str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then the build fails, with pip's reason
    out = build.stdout + build.stderr
    for step in re.findall(r"---> ([0-9a-f]{12})", out):  # the classic builder's untagged steps
        with contextlib.suppress(Exception):
            if not engine.images.get(step).tags:
                engine.images.remove(step)
    assert build.returncode != 0, out
    assert "No matching distribution found for decode-fetcher==0.0.0" in out


def test_docker_stop_removes_a_fetcher_container_that_exited(
    engine: Any, fetcher_image: str
) -> None:
    # Given a fetcher container an engine restart left exited (255: the test run that made it was
    # cut short), beside a running one: `docker ps` without -a lists only the running one
    name = f"decode-fetcher-left-{secrets.token_hex(4)}"
    exited = engine.containers.create(fetcher_image, ["--version"], name=f"{name}-exited")
    running = engine.containers.run(
        fetcher_image, name=f"{name}-running", entrypoint=["sleep", "300"], detach=True
    )
    try:
        exited.start()
        assert exited.wait(timeout=60)["StatusCode"] == 0
        # When the admin runs docker-stop
        assert docker_tasks.stop(["-t", "1", "--filter", f"name={name}"]) == 0
        # Then both are gone
        assert not engine.containers.list(all=True, filters={"name": name})
    finally:
        for container in (exited, running):
            with contextlib.suppress(Exception):
                container.remove(force=True)


def test_docker_run_stop_and_cleanup_scripts(env: Env, engine: Any, fetcher_image: str) -> None:
    name = f"decode-fetcher-test-{secrets.token_hex(4)}"
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
            name,
            "--docker-arg=--network=host",
        ]
    )
    try:
        assert rc == 0
        wait_for(lambda: job.status.value == "finished", 60, "job finished via docker-run")
        daemon = engine.containers.get(name)
        assert sorted(daemon.attrs["HostConfig"]["Binds"]) == sorted(
            ["/var/run/docker.sock:/var/run/docker.sock", f"{env.base}:/data"]
        )  # the engine keeps no order of its own
        assert f"PATH_HOST_BASE={env.base}" in daemon.attrs["Config"]["Env"]
        # Then docker-stop stops it cleanly and removes it (kept to this test's container: another
        # run on this engine may have fetcher containers of its own)
        assert docker_tasks.stop(["--filter", f"name={name}"]) == 0
        assert not engine.containers.list(all=True, filters={"name": name})
    finally:
        subprocess.run(["/usr/bin/docker", "rm", "-f", name], capture_output=True)
    # And docker-cleanup removes the fetcher's images
    assert docker_tasks.cleanup([]) == 0
    assert not engine.images.list(name=docker_tasks.IMAGE)


def test_the_busybox_test_image_is_on_the_engine(engine: Any) -> None:
    engine.images.get(IMAGE)
