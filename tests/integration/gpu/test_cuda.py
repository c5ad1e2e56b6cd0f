"""On the real engine: a job whose image needs a newer CUDA than this box's driver supports is
handed back before its container is made, with the reason in one line, and the driver too old
for image after image quarantines the box (it would churn through the queue)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.models import HardwareSpecs
from fetcher.quarantine import BOX
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.helpers import IMAGE, Env, daemon_in_thread, fetcher_id, wait_for

pytestmark = pytest.mark.docker

CUDA_IMAGE = "fetcher-test/cuda-12.8:1"
# the first part of NVIDIA's cuda:12.8.1-base-ubuntu22.04 requirement (dist/12.8.1/.../Dockerfile)
REQUIRE = (
    "cuda>=12.8 brand=unknown,driver>=470,driver<471 brand=grid,driver>=470,driver<471"
    " brand=tesla,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471"
)


@pytest.fixture
def cuda_image(engine: Any) -> Iterator[str]:
    dockerfile = f'FROM {IMAGE}\nENV NVIDIA_REQUIRE_CUDA="{REQUIRE}"\n'
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=CUDA_IMAGE, rm=True)
    yield CUDA_IMAGE
    engine.images.remove(CUDA_IMAGE, force=True)


def test_an_image_needing_a_newer_cuda_is_handed_back_before_its_container_is_made(
    env: Env, engine: Any, cuda_image: str
) -> None:
    # Given a box whose driver supports CUDA 12.2, and three jobs of a CUDA 12.8 image
    jobs = [
        env.submit(["true"], image=cuda_image, hardware=HardwareSpecs(gpu_mem=1000, memory=64))
        for _ in range(3)
    ]
    fake = FakeNvml([FakeGpu.a100()], driver="535.104.05", cuda=12020)
    fid = fetcher_id("cuda")
    created: list[str] = []
    settings = env.settings(fetcher_id=fid, quarantine_after_failures=3)
    daemon = build_daemon(settings, docker_client=engine, nvml=fake)
    events = engine.events(decode=True, filters={"event": "create", "label": f"{LABEL_ID}={fid}"})
    threading.Thread(target=lambda: created.extend(e["id"] for e in events), daemon=True).start()
    try:
        with daemon_in_thread(daemon, timeout_s=60):
            # When they are claimed, then each is handed back with the reason in one line
            wait_for(
                lambda: all(j.claims and j.status.value == "queued" for j in jobs), 60, "hand-backs"
            )
            for job in jobs:
                details = job.history[-1]["runtime_details"] or ""
                assert details.startswith(
                    "handed back by the worker: needs CUDA >= 12.8; this box's driver supports"
                    " CUDA 12.2 (driver 535.104.05)"
                ), details
                assert "\n" not in details
            # and a driver too old for image after image quarantines the box
            wait_for(lambda: daemon.deps.quarantine.why(BOX), 10, "the box's quarantine")
            daemon.worker.request_stop()
    finally:
        events.close()
    # no container was ever made for them
    assert created == []
