"""Metrics: the event methods move the series that a real scrape of /metrics shows."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator

import pytest

from fetcher.errors import JobGone
from fetcher.logs import register_secret
from fetcher.metrics import FAILURE_REASONS, OUTCOMES, STAGE_BUCKETS_S, Metrics, settings_for_info
from fetcher.settings import Settings
from tests.fakes import FakeClock
from tests.helpers import scrape, value


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics(clock=clock)
    port = metrics.serve(0, "127.0.0.1")
    try:
        yield metrics, port
    finally:
        metrics.close()


def test_jobs_and_failures_are_counted_by_outcome_and_reason(served: tuple[Metrics, int]) -> None:
    # Given a served registry where every known outcome and reason starts at 0
    metrics, port = served
    before = scrape(port)
    for outcome in OUTCOMES:
        assert value(before, "fetcher_jobs_total", outcome=outcome) == 0
    for reason in FAILURE_REASONS:
        assert value(before, "fetcher_job_failures_total", reason=reason) == 0

    # When jobs are claimed and end in each way
    for _ in range(4):
        metrics.job_claimed()
    metrics.job_ended("finished")
    metrics.job_ended("error", "exit_code")
    metrics.job_ended("error", "oom")
    metrics.job_ended("handed_back")
    metrics.job_ended("error")  # no reason given: other

    # Then the scrape shows them
    after = scrape(port)
    assert value(after, "fetcher_jobs_claimed_total") == 4
    assert value(after, "fetcher_jobs_total", outcome="finished") == 1
    assert value(after, "fetcher_jobs_total", outcome="error") == 3
    assert value(after, "fetcher_jobs_total", outcome="handed_back") == 1
    assert value(after, "fetcher_jobs_total", outcome="gone") == 0
    assert value(after, "fetcher_job_failures_total", reason="exit_code") == 1
    assert value(after, "fetcher_job_failures_total", reason="oom") == 1
    assert value(after, "fetcher_job_failures_total", reason="other") == 1
    assert value(after, "fetcher_job_failures_total", reason="transfer") == 0


def test_unknown_label_values_become_other_and_never_new_series(
    served: tuple[Metrics, int], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a caller that passes a job id where a fixed name belongs
    metrics, port = served
    caplog.set_level(logging.WARNING, "fetcher.metrics")

    # When it does so, several times
    for _ in range(3):
        metrics.job_ended("error", "job 1234 exploded")
        metrics.api_call("/jobs/1234/status", "ok")
        metrics.transferred("sideways", 10)

    # Then only fixed label values appear, and each mistake is logged once
    series = scrape(port)
    labels = {v for (_, ls) in series for (_, v) in ls}
    assert not any("1234" in v or v == "sideways" for v in labels)
    assert value(series, "fetcher_job_failures_total", reason="other") == 3
    assert value(series, "fetcher_api_calls_total", call="other", outcome="ok") == 3
    assert value(series, "fetcher_transfer_bytes_total", direction="other") == 30
    assert len([r for r in caplog.records if "unknown" in r.getMessage()]) == 3


def test_stage_histogram_counts_each_block_also_when_it_raises(
    served: tuple[Metrics, int],
) -> None:
    # Given the stage histogram with buckets from 0.05 s to 2 days
    metrics, port = served
    assert STAGE_BUCKETS_S[0] == 0.05 and STAGE_BUCKETS_S[-1] == 2 * 86400

    # When a download and two runs are timed, one of which fails
    with metrics.stage("download"):
        pass
    with metrics.stage("run"):
        pass
    with pytest.raises(RuntimeError), metrics.stage("run"):
        raise RuntimeError("container died")

    # Then the histogram counts them, each in the fastest bucket and in +Inf
    series = scrape(port)
    assert value(series, "fetcher_stage_seconds_count", stage="download") == 1
    assert value(series, "fetcher_stage_seconds_count", stage="run") == 2
    assert value(series, "fetcher_stage_seconds_count", stage="upload") == 0
    assert value(series, "fetcher_stage_seconds_bucket", stage="run", le="0.05") == 2
    assert value(series, "fetcher_stage_seconds_bucket", stage="run", le="+Inf") == 2
    assert value(series, "fetcher_stage_seconds_bucket", stage="pull", le="172800.0") == 0
    assert 0 <= value(series, "fetcher_stage_seconds_sum", stage="run") < 1


def test_transfer_bytes_and_api_calls_are_counted_by_direction_name_and_outcome(
    served: tuple[Metrics, int],
) -> None:
    # Given a served registry
    metrics, port = served

    # When files move and API calls succeed, fail and retry
    metrics.transferred("down", 1000)
    metrics.transferred("down", 24)
    metrics.transferred("up", 5)
    metrics.transferred("up", 0)
    metrics.api_call("claim")
    metrics.api_call("claim")
    metrics.api_retry("status")
    metrics.api_retry("status")
    metrics.api_call("status", "unavailable")
    with metrics.track_api("upload"):
        pass
    with pytest.raises(JobGone), metrics.track_api("status"):
        raise JobGone("job 7: gone", 404)

    # Then the scrape shows the bytes by direction and the calls by name and outcome
    series = scrape(port)
    assert value(series, "fetcher_transfer_bytes_total", direction="down") == 1024
    assert value(series, "fetcher_transfer_bytes_total", direction="up") == 5
    assert value(series, "fetcher_api_calls_total", call="claim", outcome="ok") == 2
    assert value(series, "fetcher_api_calls_total", call="status", outcome="unavailable") == 1
    assert value(series, "fetcher_api_calls_total", call="status", outcome="gone") == 1
    assert value(series, "fetcher_api_calls_total", call="upload", outcome="ok") == 1
    assert value(series, "fetcher_api_retries_total", call="status") == 2


def test_gauges_follow_the_latest_values(served: tuple[Metrics, int]) -> None:
    # Given a served registry
    metrics, port = served

    # When the slots, GPUs and outbox change twice
    metrics.set_slots(busy=2, total=4)
    metrics.set_gpus(in_use=2, total=4)
    metrics.set_outbox(3)
    metrics.set_slots(busy=1, total=4)
    metrics.set_outbox(0)
    metrics.images_pruned(2, 3_000_000)

    # Then the scrape shows the latest
    series = scrape(port)
    assert value(series, "fetcher_jobs_running") == 1
    assert value(series, "fetcher_job_slots") == 4
    assert value(series, "fetcher_gpus_in_use") == 2
    assert value(series, "fetcher_gpus") == 4
    assert value(series, "fetcher_outbox_pending") == 0
    assert value(series, "fetcher_images_pruned_total") == 2
    assert value(series, "fetcher_image_pruned_bytes_total") == 3_000_000
    assert value(series, "process_resident_memory_bytes") > 0


def test_seconds_since_last_claim_is_computed_at_scrape_time(
    served: tuple[Metrics, int], clock: FakeClock
) -> None:
    # Given a fetcher that started 100 s ago and has not claimed yet
    metrics, port = served
    clock.now += 100
    series = scrape(port)
    assert value(series, "fetcher_last_claim_timestamp_seconds") == 0
    assert value(series, "fetcher_seconds_since_last_claim") == 100

    # When a claim succeeds, and 30 s pass
    metrics.claim_succeeded()
    claimed_at = clock.now
    clock.now += 30

    # Then the timestamp is the claim's and the age grows without any event
    series = scrape(port)
    assert value(series, "fetcher_last_claim_timestamp_seconds") == claimed_at
    assert value(series, "fetcher_seconds_since_last_claim") == 30
    clock.now += 870
    assert value(scrape(port), "fetcher_seconds_since_last_claim") == 900


def test_info_shows_the_version_and_only_allowed_settings(served: tuple[Metrics, int]) -> None:
    # Given settings with secrets, a URL with credentials in it and a registered secret
    metrics, port = served
    register_secret("hunter2-secret-pw")
    settings = Settings(
        _env_file=None,
        api_url="https://user:hunter2-secret-pw@api.example.org:8001/v1?token=abc",
        path_base="/tmp/base",
        username="worker-1",
        password="hunter2-secret-pw",
        fetcher_id="box-7",
    )
    info = settings_for_info(settings)

    # When the info is set from the settings plus a secret the caller slipped in
    metrics.set_info("1.2.3", {**info, "password": "hunter2-secret-pw"})

    # Then fetcher_info carries the version and the allow-listed settings, and no secret
    series = scrape(port)
    ((_name, labels),) = [k for k in series if k[0] == "fetcher_info"]
    shown = dict(labels)
    assert shown["version"] == "1.2.3"
    assert shown["fetcher_id"] == "box-7"
    assert shown["api_url"] == "https://api.example.org:8001/v1"
    assert shown["image_pull_policy"] == "auto"
    assert "password" not in shown and "access_token" not in shown and "username" not in shown
    assert not any("hunter2" in v or v == "abc" for v in shown.values())


def test_two_metrics_objects_do_not_collide() -> None:
    # Given two fetchers in one process
    with Metrics() as a, Metrics() as b:
        port_a, port_b = a.serve(0, "127.0.0.1"), b.serve(0, "127.0.0.1")

        # When only one of them claims
        a.job_claimed()

        # Then each registry shows its own count
        assert value(scrape(port_a), "fetcher_jobs_claimed_total") == 1
        assert value(scrape(port_b), "fetcher_jobs_claimed_total") == 0
        with pytest.raises(RuntimeError):
            a.serve(0, "127.0.0.1")

    # And after close() the port answers no more
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port_a}/metrics", timeout=2)
