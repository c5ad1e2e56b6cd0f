"""What a job did with its GPU, on the real engine: sampled while its container runs, reported in
its runtime_details and container.log (`gpu: mean 87 % util, peak 10.0 GiB of 40 GiB`), counted in
the metrics; a job that never touched its GPU is logged as such. The GPU is the faithful NVML
fake's (the job's CUDA context is a process the test puts on it); device requests are stripped
before create, as this host has no GPU runtime."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.models import HardwareSpecs
from tests.fakes.engine import StripGpuRequests
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.helpers import Env, daemon_in_thread, fetcher_id, wait_for

pytestmark = pytest.mark.docker

GiB = 1024**3


def test_a_jobs_gpu_figures_are_in_its_report_its_log_and_the_metrics(
    env: Env, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job on a (simulated) A100 that uses 10 GiB at 87 % while its container runs
    job = env.submit(
        ["sleep 3"],
        hardware=HardwareSpecs(gpu_mem=1000, memory=64),
        files_up={"log": "log"},
    )
    fake = FakeNvml([FakeGpu.a100()])
    fake.set_utilization(0, 87)  # from the first sample on: the mean does not depend on timing
    settings = env.settings(fetcher_id=fetcher_id("figures"), gpu_sample_interval_s=0.2)
    daemon = build_daemon(
        settings, exit_when_idle=True, docker_client=StripGpuRequests(engine), nvml=fake
    )

    def the_job_uses_its_gpu() -> None:  # its memory only once it holds the GPU (else: foreign)
        wait_for(lambda: job.status.value == "running", 30, "running")
        fake.add_process(0, 4242, 10 * GiB)

    helper = threading.Thread(target=the_job_uses_its_gpu, daemon=True)
    helper.start()
    with caplog.at_level("INFO"), daemon_in_thread(daemon) as run:
        pass
    assert run.rc == 0
    helper.join(5)
    # Then its report, its container.log and the metrics carry the figures
    details = job.history[-1]["runtime_details"] or ""
    assert job.status.value == "finished"
    assert details.splitlines()[0] == "exit_code: 0"
    assert details.splitlines()[-1] == "gpu: mean 87 % util, peak 10.0 GiB of 40 GiB", details
    log_file = Path(job.paths_upload["log"], "log", "container.log")
    assert (
        log_file.read_text()
        .rstrip()
        .endswith("[fetcher] gpu: mean 87 % util, peak 10.0 GiB of 40 GiB")
    )
    series = daemon.deps.metrics.registry.get_sample_value
    assert series("fetcher_job_gpu_peak_memory_bytes_count") == 1
    assert series("fetcher_job_gpu_peak_memory_bytes_sum") == 10 * GiB
    assert series("fetcher_jobs_gpu_unused_total") == 0


def test_a_job_that_never_touched_its_gpu_is_logged_as_such(
    env: Env, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = env.submit(["sleep 2"], hardware=HardwareSpecs(gpu_mem=1000, memory=64))
    fake = FakeNvml([FakeGpu.a100()])
    settings = env.settings(fetcher_id=fetcher_id("unused"), gpu_sample_interval_s=0.2)
    daemon = build_daemon(
        settings, exit_when_idle=True, docker_client=StripGpuRequests(engine), nvml=fake
    )
    with caplog.at_level("INFO"), daemon_in_thread(daemon) as run:
        pass
    assert run.rc == 0
    assert job.status.value == "finished"
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and r.getMessage().startswith(f"job {job.id}: gpu: never used")
    ]
    assert warned, [r.getMessage() for r in caplog.records]
    assert (job.history[-1]["runtime_details"] or "").endswith(
        "gpu: never used (no process on it, 0 % util, of 40 GiB)"
    )
    assert daemon.deps.metrics.registry.get_sample_value("fetcher_jobs_gpu_unused_total") == 1
