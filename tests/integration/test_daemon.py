"""The daemon on a real Docker engine against mock_api, as `build_daemon` wires it from the
settings: parallel GPU jobs each on its own GPU, only what fits claimed or run, one fetcher per
PATH_BASE."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.models import HardwareSpecs
from mock_api.state import Faults
from tests.fakes.engine import StripGpuRequests
from tests.helpers import (
    Env,
    FakeNvml,
    daemon_in_thread,
    four_gpus,
    run_until_idle,
    running_containers,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.docker


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
    with daemon_in_thread(daemon, timeout_s=60) as run:
        # Then four containers run at once, and the fifth job waits for a free slot
        wait_for(
            lambda: len(running_containers(engine, settings.fetcher_id or "")) == 4,
            30,
            "4 running containers",
        )
        assert sum(j.status.value == "queued" for j in jobs) == 1
    assert run.rc == 0
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
    assert run_until_idle(env.settings(memory_mb=8000, reserve_memory_mb=4000), engine) == 0
    assert small.status.value == "finished"
    assert statuses(big) == ["queued"], "the server is told only 4000 MB are free"
    assert small.claims[0]["memory"] == 4000


def test_job_that_arrives_but_does_not_fit_is_handed_back_queued(env: Env, engine: Any) -> None:
    # Given a server whose rules are looser than ours (it ignores the hardware we send)
    env.state.set_faults(Faults(ignore_hardware=True))
    big = env.submit(["true"], hardware=HardwareSpecs(memory=6000), priority=9)
    small = env.submit(["true"], hardware=HardwareSpecs(memory=64))
    assert run_until_idle(env.settings(memory_mb=4000), engine) == 0
    # Then the big job is handed back with a reason, never run, and the small one runs
    assert statuses(big) == ["queued", "pulled", "queued"]
    assert "6000 MB memory" in big.history[-1]["runtime_details"]
    assert small.status.value == "finished"


def test_box_without_gpus_does_not_claim_a_gpu_job(env: Env, engine: Any) -> None:
    gpu_job = env.submit(["true"], hardware=HardwareSpecs(gpu_mem=8000, memory=64))
    model_job = env.submit(["true"], hardware=HardwareSpecs(gpu_model="NVIDIA A100", memory=64))
    cpu_job = env.submit(["true"])
    assert run_until_idle(env.settings(), engine, nvml=FakeNvml(fail_init=True)) == 0
    assert cpu_job.status.value == "finished"
    assert statuses(gpu_job) == ["queued"] and statuses(model_job) == ["queued"]
    assert cpu_job.claims[0]["gpu_mem"] == 0


def test_a_second_fetcher_on_the_same_base_path_is_refused(env: Env, engine: Any) -> None:
    from fetcher.errors import ConfigError

    first = build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    with pytest.raises(ConfigError, match="another fetcher"):
        build_daemon(env.settings(), exit_when_idle=True, docker_client=engine)
    first.lock.close()
