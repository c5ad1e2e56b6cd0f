"""What the real engine's refusals mean: a failure of this box (no NVIDIA runtime) hands the job
back; one of the job's image (a file at /files) is the job's `error`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.models import HardwareSpecs
from tests.helpers import IMAGE, Env, FakeNvml, fetcher_id, run_until_idle, statuses

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("on_failure", ["hand-back", "error"])
def test_gpu_request_on_a_host_without_gpu_runtime_is_the_workers_trouble(
    env: Env, engine: Any, on_failure: str
) -> None:
    # Given NVML (faked) shows one GPU, but this engine has no NVIDIA runtime
    nvml = FakeNvml([("GPU-11111111-2222-3333-4444-555555555555", "NVIDIA T4", 15360, 6)])
    job = env.submit(["true"], hardware=HardwareSpecs(gpu_mem=1000, memory=64))
    assert run_until_idle(env.settings(on_worker_failure=on_failure), engine, nvml=nvml) == 0
    # Then the engine's own refusal of the device request is the reason; the box, not the job, is
    # at fault: the job is handed back (or, if so configured, `error`); no `created` container stays
    expected = "queued" if on_failure == "hand-back" else "error"
    assert job.status.value == expected, statuses(job)
    assert 'could not select device driver "nvidia"' in job.history[-1]["runtime_details"]
    assert "running" not in statuses(job)
    assert job.claims[0]["gpu_mem"] == 15360 and job.claims[0]["gpu_model"] == "NVIDIA T4"


FILES_IS_A_FILE = "fetcher-test/files-is-a-file:1"


@pytest.fixture
def bad_image(engine: Any) -> Iterator[str]:
    dockerfile = f"FROM {IMAGE}\nRUN echo x > /files\n"
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=FILES_IS_A_FILE, rm=True)
    yield FILES_IS_A_FILE
    engine.images.remove(FILES_IS_A_FILE, force=True)


def test_an_image_that_cannot_take_the_files_mount_is_the_jobs_error(
    env: Env, engine: Any, bad_image: str
) -> None:
    """An image with a regular file at /files fails to start with "error mounting ... to rootfs at
    "/files" ... not a directory": the job's `error`, though "error mounting" also marks this box's
    own troubles (part of the engine's message is the job's doing). Handed back, it would fail the
    same way on every worker of the pool."""
    job = env.submit(["true"], image=bad_image)
    settings = env.settings(fetcher_id=fetcher_id("mountfile"), image_pull_policy="never")
    assert run_until_idle(settings, engine) == 0
    assert job.status.value == "error", statuses(job)
    assert "/files" in str(job.history[-1]["runtime_details"])
