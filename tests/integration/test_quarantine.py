"""On the real engine, a GPU that fails every job is quarantined instead of becoming a black hole:
each job it failed is handed back (nothing lost), then the box claims nothing and says why, in
the log, `fetcher status` and the metrics; `fetcher gpu release` lets it claim again. The GPU is
the faithful NVML fake's; its jobs fail as on a box whose NVIDIA runtime cannot give it to the
container: the engine refuses the device request at start."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher import control
from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.models import HardwareSpecs
from fetcher.status import gather, render
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.helpers import Env, daemon_in_thread, fetcher_id, wait_for

pytestmark = pytest.mark.docker

GPU_JOB = HardwareSpecs(gpu_mem=1000, cpu_cores=1, memory=64)


def test_a_gpu_that_fails_every_job_is_quarantined_and_nothing_is_lost(
    env: Env, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given one (simulated) GPU that the engine cannot give to a container, and four GPU jobs
    jobs = [env.submit(["true"], hardware=GPU_JOB) for _ in range(4)]
    fake = FakeNvml([FakeGpu.a100()])
    fid = fetcher_id("quarantine")
    settings = env.settings(fetcher_id=fid, quarantine_after_failures=3, metrics_port=0)
    daemon = build_daemon(settings, docker_client=engine, nvml=fake)
    uuid = daemon.host.gpus[0].uuid
    with caplog.at_level("INFO"), daemon_in_thread(daemon, timeout_s=60):
        # When three jobs in a row fail at the start of their container
        wait_for(
            lambda: (
                sum(j.status.value == "queued" and len(j.claims) == 1 for j in jobs) == 3
                and daemon.deps.quarantine.why(uuid)
            ),
            90,
            "three hand-backs and the quarantine",
        )
        # Then each of them was handed back with the reason (nothing lost), ...
        handed = [j for j in jobs if j.claims]
        assert len(handed) == 3
        for job in handed:
            details = job.history[-1]["runtime_details"] or ""
            assert job.status.value == "queued"
            assert details.startswith("handed back by the worker:"), details
            assert "could not select device driver" in details
        # ... the GPU is quarantined, the box claims nothing more and says why
        wait_for(lambda: daemon.worker.source.paused, 10, "claims paused")  # type: ignore[attr-defined]
        assert "no healthy GPU left" in str(daemon.worker.source.paused)  # type: ignore[attr-defined]
        (fourth,) = [j for j in jobs if not j.claims]
        claims = len(env.state.jobs)
        assert fourth.status.value == "queued"
        # the log names it once, `fetcher status` shows it, the metric says it
        logged = [m for r in caplog.records if (m := r.getMessage()).startswith(f"gpu {uuid}")]
        assert len(logged) == 1 and "quarantined: 3 jobs in a row failed" in logged[0], logged
        wait_for(lambda: (gather(env.base).get("daemon") or {}).get("claims_paused"), 10, "status")
        text = render(gather(env.base))
        assert f"gpu {uuid} (GPU 0" in text and "3 jobs in a row failed" in text
        assert f"fetcher gpu release {uuid}" in text
        assert "claiming paused: no healthy GPU left" in text, text
        port = daemon.deps.metrics.port
        assert port is not None
        scraped = scrape(port)
        assert f'fetcher_gpu_healthy{{gpu="{uuid}"}} 0.0' in scraped
        assert 'fetcher_claims_paused{reason="unhealthy"} 1.0' in scraped
        # When the admin releases it, the box claims again (the fourth job is run)
        control.request_release(settings.state_dir, [uuid])
        wait_for(lambda: fourth.claims, 30, "the fourth job to be claimed")
        assert daemon.deps.quarantine.why(uuid) is None and len(env.state.jobs) == claims
        daemon.worker.request_stop()
    # and nothing is left on the engine
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())
