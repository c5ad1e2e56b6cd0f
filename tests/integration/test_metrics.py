"""/metrics on a real engine: the series move as real jobs run."""

from __future__ import annotations

from typing import Any

import pytest

from fetcher.daemon import build_daemon
from mock_api.server import free_port
from tests.helpers import Env, daemon_in_thread, scrape, value, wait_for

pytestmark = pytest.mark.docker


def test_metrics_move_as_real_jobs_run(env: Env, engine: Any) -> None:
    # Given a fetcher serving /metrics, a job with an input that runs 3 s, and one that fails
    port = free_port()
    data = env.input_file("user1/in/data.bin", b"z" * 12345)
    long = env.submit(
        ["sleep 3", "&&", "echo out > /files/output/o.txt"], files_down={"in/data.bin": data}
    )
    daemon = build_daemon(env.settings(metrics_port=port), docker_client=engine)
    with daemon_in_thread(daemon, timeout_s=60):
        try:
            # While the first job runs: one slot busy, a claim made, no job ended yet
            wait_for(lambda: long.status.value == "running", 30, "running")
            during = scrape(port)
            assert value(during, "fetcher_jobs_running") == 1
            assert value(during, "fetcher_job_slots") == 1
            assert value(during, "fetcher_api_calls_total", call="claim", outcome="ok") >= 1
            assert value(during, "fetcher_jobs_total", outcome="finished") == 0
            assert value(during, "fetcher_seconds_since_last_claim") < 30
            assert value(during, "fetcher_transfer_bytes_total", direction="down") == 12345
            failing = env.submit(["exit 3"], files_up={})
            wait_for(lambda: long.status.value == "finished", 30, "first job finished")
            wait_for(lambda: failing.status.value == "error", 30, "second job failed")
            wait_for(
                lambda: value(scrape(port), "fetcher_jobs_total", outcome="error") == 1, 10, "end"
            )
            # the gauges follow at the loop's next pass (every TIMEOUT_JOB, 0.2 s here)
            wait_for(
                lambda: (
                    value(scrape(port), "fetcher_outbox_pending") == 0
                    and value(scrape(port), "fetcher_jobs_running") == 0
                ),
                10,
                "the gauges of an idle fetcher",
            )
            after = scrape(port)
        finally:
            daemon.worker.request_stop()
    # Then the counters and histograms moved as the jobs did
    assert value(after, "fetcher_jobs_claimed_total") == 2
    assert value(after, "fetcher_jobs_total", outcome="finished") == 1
    assert value(after, "fetcher_jobs_total", outcome="error") == 1
    assert value(after, "fetcher_job_failures_total", reason="exit_code") == 1
    assert value(after, "fetcher_stage_seconds_count", stage="run") == 2
    assert value(after, "fetcher_stage_seconds_sum", stage="run") >= 3
    assert value(after, "fetcher_stage_seconds_count", stage="download") == 2
    assert value(after, "fetcher_stage_seconds_count", stage="upload") == 2
    assert value(after, "fetcher_transfer_bytes_total", direction="up") > 0
    assert value(after, "fetcher_jobs_running") == 0
    assert value(after, "fetcher_outbox_pending") == 0
