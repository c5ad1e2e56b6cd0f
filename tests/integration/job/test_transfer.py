"""Downloads through API trouble, on a real engine: an outage longer than the retry budget or a
refused login hands the job back (the worker's trouble, not the job's); with the default budget a
download rides out a 10-minute outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fetcher.settings import Settings
from mock_api.state import ApiFailure, Faults
from tests.helpers import Env, finals, last_details, run_until_idle, statuses, wait_for

pytestmark = pytest.mark.docker


def outage_from_download(env: Env, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The API goes down (every request dropped) the moment the first download is asked for."""
    real = env.state.check_in_store
    started = threading.Event()

    def check_in_store(path: str, what: str) -> Path:
        if what == "file id" and not started.is_set():
            started.set()
            env.state.set_faults(Faults(down_for_s=seconds))
            raise ApiFailure(500)
        return real(path, what)

    monkeypatch.setattr(env.state, "check_in_store", check_in_store)


def test_an_api_outage_longer_than_the_retry_budget_during_a_download_hands_the_job_back(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid_in = env.input_file("user1/in/x.bin", b"x" * 1000)
    job = env.submit(["true"], files_down={"in/x.bin": fid_in})
    outage_from_download(env, monkeypatch, 8)
    assert run_until_idle(env.settings(api_retry_s=2.0), engine) == 0
    assert job.status.value == "queued" and finals(job) == [], statuses(job)
    assert "input" in last_details(job), last_details(job)


def test_a_refused_login_during_a_download_hands_the_job_back(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that stops accepting the worker's token when the download starts (for 3 s)
    fid_in = env.input_file("user1/in/x.bin", b"x" * 1000)
    job = env.submit(["true"], files_down={"in/x.bin": fid_in})
    real = env.state.check_in_store
    saved: dict[str, Any] = {}

    def check_in_store(path: str, what: str) -> Path:
        if what == "file id" and not saved:
            with env.state.lock:
                saved.update(env.state.tokens)
                env.state.tokens.clear()
            threading.Timer(3, lambda: env.state.tokens.update(saved)).start()
            raise ApiFailure(401, "Not verified")
        return real(path, what)

    monkeypatch.setattr(env.state, "check_in_store", check_in_store)
    assert run_until_idle(env.settings(), engine) == 0
    # Then the job is handed back (the worker's login is at fault, not the job), once the API
    # takes the worker's token again
    wait_for(lambda: job.status.value == "queued" and len(job.history) > 3, 30, "handed back")
    assert finals(job) == [], statuses(job)
    assert "input in/x.bin" in last_details(job) and "401" in last_details(job)


@pytest.mark.outage
@pytest.mark.timeout(1200)
def test_a_download_survives_a_10_minute_outage(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid_in = env.input_file("user1/in/x.bin", b"y" * 100_000)
    job = env.submit(
        ["wc -c < /files/in/x.bin > /files/output/n.txt"], files_down={"in/x.bin": fid_in}
    )
    env.state.config.failure_timeout_s = 3600
    outage_from_download(env, monkeypatch, 600)
    # the default retry budget (the tests' settings shorten it), the default backoff cap
    settings = env.settings(
        api_retry_s=Settings.model_fields["api_retry_s"].default, api_backoff_max_s=60
    )
    started = time.monotonic()
    assert run_until_idle(settings, engine, timeout_s=1100) == 0
    assert time.monotonic() - started > 600
    assert finals(job) == ["finished"], statuses(job)
    assert Path(job.paths_upload["output"], "output", "n.txt").read_text().strip() == "100000"
