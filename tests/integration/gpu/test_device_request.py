"""The device request a job on a MIG instance gets, as the real engine records it: the MIG
UUID, the NVIDIA driver, the gpu capability. The container is created and inspected, never
started (no GPU runtime here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fetcher.engine.container import ContainerOptions, JobContainer, Limits
from fetcher.gpu.nvml import Nvml
from fetcher.job.workspace import Layout, Workspace
from fetcher.models import JobSpecs
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml
from tests.helpers import IMAGE, fetcher_id

pytestmark = pytest.mark.docker


def test_a_mig_instance_is_requested_by_its_own_uuid(engine: Any, tmp_path: Path) -> None:
    # Given an H100 with two MIG instances, and a job given the second one
    fake = FakeNvml([FakeGpu.h100()])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856), FakeMig(2, memory_mib=9856)])
    nvml = Nvml(fake)
    assert nvml.open()
    _first, second = nvml.devices()
    ws = Workspace("11", tmp_path, tmp_path)
    ws.create(Layout((), ()))
    spec = JobSpecs.model_validate({"handler": {"image_url": IMAGE}, "app": {"cmd": ["true"]}})
    job = JobContainer(engine, "11", fetcher_id("mig"), ContainerOptions(shm_size="64m"))
    args = job._create_args(spec, ws, [second.uuid], Limits(1, 64))
    # When its container is created (not started)
    container = engine.containers.create(IMAGE, **args)
    try:
        # Then the engine holds exactly one request, for that MIG instance
        container.reload()
        (request,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == [second.uuid] and second.uuid.startswith("MIG-")
        assert request["Capabilities"] == [["gpu"]]
        assert container.labels["org.decode-opencloud.fetcher.gpus"] == second.uuid
    finally:
        container.remove(force=True)
