"""The daemon on a real Docker engine against mock_api: parallel GPU jobs, fit, signals, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID, LABEL_JOB
from fetcher.models import HardwareSpecs
from mock_api.state import Faults
from tests.helpers import TOKEN, Env, FakeNvml, fetcher_id, four_gpus, statuses, wait_for

pytestmark = pytest.mark.docker


class StripGpuRequests:
    """The real engine, but device requests are recorded and removed before create: this host has
    no GPU runtime, and the test is about what the fetcher asks for, not about the driver."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.device_requests: dict[str, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def containers(self) -> Any:
        outer = self
        real = self._real.containers

        class Containers:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def create(self, image: str, **kw: Any) -> Any:
                outer.device_requests[kw["labels"][LABEL_JOB]] = (
                    kw.pop("device_requests", None) or []
                )
                return real.create(image, **kw)

        return Containers()


def running_containers(engine: Any, fetcher_id: str) -> list[Any]:
    return list(
        engine.containers.list(filters={"label": f"{LABEL_ID}={fetcher_id}", "status": "running"})
    )


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", fn()), daemon=True)
    t.start()
    return t, out


def test_four_gpus_run_four_jobs_at_once_each_on_its_own_gpu(env: Env, engine: Any) -> None:
    # Given four (simulated) GPUs and five queued GPU jobs
    jobs = [
        env.submit(["sleep 3"], hardware=HardwareSpecs(gpu_mem=1000, memory=64, cpu_cores=1))
        for _ in range(5)
    ]
    settings = env.settings(cpu_cores=16, memory_mb=8000)
    docker = StripGpuRequests(engine)
    daemon = build_daemon(settings, exit_when_idle=True, docker_client=docker, nvml=four_gpus())
    assert daemon.worker.pool.max_jobs == 4
    t, out = in_thread(daemon.run)
    # Then four containers run at once, and the fifth job waits for a free slot
    wait_for(
        lambda: len(running_containers(engine, settings.fetcher_id or "")) == 4,
        30,
        "4 running containers",
    )
    assert sum(j.status.value == "queued" for j in jobs) == 1
    t.join(60)
    assert out["rc"] == 0
    assert all(j.status.value == "finished" for j in jobs), [statuses(j) for j in jobs]
    # each device request names exactly one GPU UUID, the NVIDIA driver and the gpu capability
    uuids = []
    for reqs in docker.device_requests.values():
        [req] = reqs
        assert req["Driver"] == "nvidia" and req["Capabilities"] == [["gpu"]]
        assert len(req["DeviceIDs"]) == 1
        uuids.append(req["DeviceIDs"][0])
    first_four = [uuids[i] for i in range(4)]
    assert len(set(first_four)) == 4 and set(uuids) <= {g[0] for g in four_gpus().gpus}


def test_job_needing_more_memory_than_free_is_not_run_and_work_goes_on(
    env: Env, engine: Any
) -> None:
    big = env.submit(["true"], hardware=HardwareSpecs(memory=6000))
    small = env.submit(["true"], hardware=HardwareSpecs(memory=64))
    daemon = build_daemon(
        env.settings(memory_mb=8000, reserve_memory_mb=4000),
        exit_when_idle=True,
        docker_client=engine,
    )
    assert daemon.run() == 0
    assert small.status.value == "finished"
    assert statuses(big) == ["queued"], "the server is told only 4000 MB are free"
    assert small.claims[0]["memory"] == 4000


def test_job_that_arrives_but_does_not_fit_is_handed_back_queued(env: Env, engine: Any) -> None:
    # Given a server whose rules are looser than ours (it ignores the hardware we send)
    env.state.set_faults(Faults(ignore_hardware=True))
    big = env.submit(["true"], hardware=HardwareSpecs(memory=6000), priority=9)
    small = env.submit(["true"], hardware=HardwareSpecs(memory=64))
    daemon = build_daemon(env.settings(memory_mb=4000), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0
    # Then the big job is handed back with a reason, never run, and the small one runs
    assert statuses(big) == ["queued", "pulled", "queued"]
    assert "6000 MB memory" in big.history[-1]["runtime_details"]
    assert small.status.value == "finished"


def test_box_without_gpus_does_not_claim_a_gpu_job(env: Env, engine: Any) -> None:
    gpu_job = env.submit(["true"], hardware=HardwareSpecs(gpu_mem=8000, memory=64))
    model_job = env.submit(["true"], hardware=HardwareSpecs(gpu_model="NVIDIA A100", memory=64))
    cpu_job = env.submit(["true"])
    daemon = build_daemon(
        env.settings(), exit_when_idle=True, docker_client=engine, nvml=FakeNvml(fail_init=True)
    )
    assert daemon.run() == 0
    assert cpu_job.status.value == "finished"
    assert statuses(gpu_job) == ["queued"] and statuses(model_job) == ["queued"]
    assert cpu_job.claims[0]["gpu_mem"] == 0


def test_api_down_for_a_minute_while_a_job_ends_delivers_the_final_status(
    env: Env, engine: Any
) -> None:
    # Given a job that ends while the API is down for a minute
    job = env.submit(["sleep 2"], files_up={})
    settings = env.settings(api_retry_s=2.0, api_backoff_max_s=2.0)
    daemon = build_daemon(settings, exit_when_idle=True, docker_client=engine)
    t, out = in_thread(daemon.run)
    wait_for(lambda: job.status.value == "running", 30, "job running")
    env.state.set_faults(Faults(down_for_s=60))
    # Then the final status is kept during the outage, the daemon stays up ...
    wait_for(lambda: daemon.pending_reports() == [str(job.id)], 30, "final status kept")
    time.sleep(20)
    assert t.is_alive() and job.status.value == "running"
    # ... and it arrives, once, when the API is back
    t.join(120)
    assert out["rc"] == 0
    assert job.status.value == "finished" and job.history[-1]["runtime_details"] == "exit_code: 0"
    assert [h["status"] for h in job.history].count("finished") == 1
    assert daemon.pending_reports() == []


# --- a real fetcher process ------------------------------------------------------------------------
def fetcher_environ(env: Env, name: str, **settings: str) -> dict[str, str]:
    """The environment of a real fetcher process against the test's mock API."""
    environ = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD")}
    environ.update(
        {
            "API_URL": env.mock.url,
            "ACCESS_TOKEN": TOKEN,
            "PATH_BASE": str(env.base),
            "FETCHER_ID": name,
            "TIMEOUT_JOB": "0.2",
            "TIMEOUT_STATUS": "1",
            "STOP_GRACE_S": "2",
            "SHM_SIZE": "64m",
            "JOB_DEFAULT_MEMORY_MB": "64",
            "API_RETRY_S": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    environ.update(settings)
    return environ


def fetcher_process(env: Env, name: str, *extra: str, **settings: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fetcher", "run", *extra],
        cwd=env.root,
        env=fetcher_environ(env, name, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_first_sigterm_lets_the_job_finish_and_exits_0(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 3", "&&", "echo finished-normally"])
    proc = fetcher_process(env, fetcher_id("sig1"))
    try:
        wait_for(lambda: job.status.value == "running", 30, "job running")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == 0, output
    assert job.status.value == "finished", output
    assert env.state.next_id == 2 and len(job.claims) == 1


def test_second_sigterm_stops_the_container_within_grace_and_hands_the_job_back(
    env: Env, engine: Any
) -> None:
    job = env.submit(["trap '' TERM", ";", "sleep 300"])
    proc = fetcher_process(env, fetcher_id("sig2"), STOP_GRACE_S="2")
    try:
        wait_for(
            lambda: (
                job.status.value == "running" and running_containers(engine, fetcher_id("sig2"))
            ),
            30,
            "job running",
        )
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        second = time.monotonic()
        wait_for(
            lambda: (
                not engine.containers.list(
                    all=True, filters={"label": f"{LABEL_ID}={fetcher_id('sig2')}"}
                )
            ),
            15,
            "container gone",
        )
        assert time.monotonic() - second < 2 + 2.5
        rc = proc.wait(30)
    finally:
        proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == 0, output
    assert job.status.value == "queued", statuses(job)
    assert job.history[-1]["runtime_details"].startswith("handed back by the worker: ")
    assert "worker shut down" in job.history[-1]["runtime_details"]
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


def test_a_second_fetcher_on_the_same_base_path_is_refused(env: Env, engine: Any) -> None:
    from fetcher.errors import ConfigError

    first = build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    with pytest.raises(ConfigError, match="another fetcher"):
        build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    first.lock.close()


def test_run_command_with_a_wrong_setting_exits_2_naming_it(env: Env, tmp_path: Path) -> None:
    proc = fetcher_process(env, fetcher_id("cfg"), TIMEOUT_STATUS="often")
    rc = proc.wait(30)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == 2 and "TIMEOUT_STATUS" in output and "Traceback" not in output
