"""Keep-alive and settings: with fakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.cancel import Cancel, CancelKind
from fetcher.errors import ApiUnavailable, AuthError, BadResponse, ConfigError, JobGone
from fetcher.job.keepalive import KeepAlive
from fetcher.models import JobStatus
from fetcher.settings import load_settings


class Sink:
    """A status sink that answers from a table: None = ok, an exception = raise it."""

    def __init__(self, answers: list[Exception | None] | None = None) -> None:
        self.answers = answers or []
        self.sent: list[tuple[float, str]] = []

    def put_status(
        self,
        job_id: str,
        status: JobStatus,
        runtime_details: str | None = None,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.sent.append((time.monotonic(), status.value))
        if self.answers:
            answer = self.answers.pop(0)
            if answer is not None:
                raise answer

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus:
        return JobStatus.running


def test_keepalive_pings_every_interval_and_sends_changes_at_once() -> None:
    sink = Sink()
    ka = KeepAlive(sink, "1", 0.2, Cancel()).start(JobStatus.preprocessing)
    time.sleep(0.5)
    ka.set_status(JobStatus.running)
    time.sleep(0.05)
    ka.stop()
    statuses = [s for _, s in sink.sent]
    assert statuses[:3] == ["preprocessing"] * 3 and statuses[-1] == "running"


def test_keepalive_sends_every_change_in_order_even_for_a_short_job() -> None:
    # Given a job that moves through its statuses faster than one PUT takes
    sink = Sink()
    slow = threading.Event()
    real = sink.put_status

    def put_status(job_id: str, status: JobStatus, *a: object, **kw: object) -> None:
        slow.wait(0.05)
        real(job_id, status)

    sink.put_status = put_status  # type: ignore[method-assign]
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.preprocessing)
    ka.set_status(JobStatus.running)
    ka.set_status(JobStatus.postprocessing)
    ka.stop()
    # Then each status reached the server once, in order, before stop() returned
    assert [s for _, s in sink.sent] == ["preprocessing", "running", "postprocessing"]
    assert ka.sent == [JobStatus.preprocessing, JobStatus.running, JobStatus.postprocessing]


def test_keepalive_sends_a_change_once_then_waits_the_interval() -> None:
    sink = Sink()
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.preprocessing)
    time.sleep(0.2)
    ka.set_status(JobStatus.running)
    time.sleep(0.3)
    sent = [s for _, s in sink.sent]
    ka.stop()
    assert sent == ["preprocessing", "running"], "no extra PUT right after a change"


def test_keepalive_404_cancels_the_job_as_gone() -> None:
    cancel = Cancel()
    ka = KeepAlive(Sink([None, JobGone("gone", 404)]), "1", 0.05, cancel).start(JobStatus.running)
    assert cancel.event.wait(2)
    assert cancel.gone and "gone" in (cancel.reason or "")
    ka.stop()


@pytest.mark.parametrize(
    "error",
    [
        ApiUnavailable("down"),
        AuthError("auth: HTTP 401: Not verified", 401),
        BadResponse("auth: unexpected Cognito answer (KeyError('IdToken'))"),
        RuntimeError("a bug in the sink"),
    ],
)
def test_keepalive_failures_other_than_404_never_cancel_the_job(error: Exception) -> None:
    sink = Sink([error, error, None, None])
    cancel = Cancel()
    ka = KeepAlive(sink, "1", 0.05, cancel).start(JobStatus.running)
    time.sleep(0.4)
    ka.stop()
    assert len(sink.sent) >= 4 and not cancel.is_set() and ka.pings >= 2


def test_keepalive_stop_is_immediate_with_a_long_interval() -> None:
    ka = KeepAlive(Sink(), "1", 3600, Cancel()).start(JobStatus.running)
    time.sleep(0.05)
    started = time.monotonic()
    ka.stop()
    assert time.monotonic() - started < 0.5


def test_keepalive_stop_does_not_wait_for_an_api_that_is_down() -> None:
    sink = Sink([ApiUnavailable("down")] * 100)
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.running)
    ka.set_status(JobStatus.postprocessing)
    started = time.monotonic()
    ka.stop(flush_s=1.0)
    assert time.monotonic() - started < 1.5


def test_cancel_wakes_its_subscribers_once_with_the_first_reason() -> None:
    cancel = Cancel()
    early, late = threading.Event(), threading.Event()
    cancel.subscribe(early)
    cancel.set("the job is gone", CancelKind.gone)
    cancel.set("worker shut down", CancelKind.shutdown)
    cancel.subscribe(late)
    assert early.is_set() and late.is_set()
    assert cancel.gone and cancel.reason == "the job is gone"


def test_missing_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in ("API_URL", "ACCESS_TOKEN", "USERNAME", "PASSWORD", "PATH_BASE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "API_URL: missing" in str(info.value) and "PATH_BASE: missing" in str(info.value)


def test_wrong_settings_name_the_setting_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_URL", "ftp://x")
    monkeypatch.setenv("PATH_BASE", str(tmp_path))
    monkeypatch.setenv("ACCESS_TOKEN", "abc12345")
    monkeypatch.setenv("TIMEOUT_JOB", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "API_URL: expected an http:// or https:// URL" in text
    assert "TIMEOUT_JOB:" in text and "number" in text
    assert "abc12345" not in text


def test_auth_settings_need_a_token_or_a_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_URL", "http://x")
    monkeypatch.setenv("PATH_BASE", str(tmp_path))
    monkeypatch.delenv("ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("USERNAME", "alice")
    monkeypatch.delenv("PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="PASSWORD"):
        load_settings()


def test_dotenv_and_legacy_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k in (
        "API_URL",
        "ACCESS_TOKEN",
        "USERNAME",
        "PASSWORD",
        "PATH_BASE",
        "TIMEOUT_JOB",
        "TIMEOUT_STATUS",
    ):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / ".env").write_text(
        f"API_URL=http://api:8001/\nACCESS_TOKEN=tok12345\nPATH_BASE={tmp_path}\nTIMEOUT_JOB=5\nTIMEOUT_STATUS=30\n"
    )
    s = load_settings()
    assert (
        s.api_url == "http://api:8001" and s.poll_interval_s == 5 and s.keepalive_interval_s == 30
    )
    assert s.host_base == tmp_path and "tok12345" not in repr(s)


def test_the_keepalive_never_outlives_its_job_even_when_reporting_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher import outcome
    from fetcher.delivery import Deliverer
    from fetcher.job import deps as job_deps
    from fetcher.job import pipeline
    from fetcher.models import JobSpecs
    from fetcher.settings import Settings
    from fetcher.store import JobStore

    # Given a job whose steps fail, and whose failure cannot even be classified (a bug)
    def boom(*_: object) -> None:
        raise ValueError("a step failed")

    def broken_classify(*_: object) -> None:
        raise RuntimeError("a bug while classifying")

    monkeypatch.setattr(pipeline, "run_steps", boom)
    monkeypatch.setattr(outcome, "of_failure", broken_classify)
    sink = Sink()
    store = JobStore(tmp_path / "jobs.sqlite")
    settings = Settings(
        _env_file=None, api_url="http://x", access_token="tok-12345", path_base=tmp_path
    )
    deps = job_deps.JobDeps(settings, sink, None, store, Deliverer(store, sink), "f")  # type: ignore[arg-type]
    spec = JobSpecs.model_validate({"handler": {"image_url": "img"}})
    before = {t.name for t in threading.enumerate()}
    # When it runs, the bug escapes to the job thread's last guard ...
    with pytest.raises(RuntimeError):
        pipeline.process_job("7", spec, deps)
    # ... but the keep-alive has stopped: no ping goes on for a job nobody runs
    time.sleep(0.1)
    assert "keepalive-7" not in {t.name for t in threading.enumerate()} - before
    sent = len(sink.sent)
    time.sleep(0.3)
    assert len(sink.sent) == sent


def test_run_parallel_hands_out_a_few_items_at_a_time() -> None:
    # Review finding: every output became a future at once (about 2 KB each: 2 GB for a million).
    from fetcher.job.transfer import run_parallel

    lock = threading.Lock()
    state = {"pulled": 0, "finished": 0, "most_ahead": 0}

    def items() -> Iterator[int]:
        for i in range(2000):
            with lock:
                state["pulled"] += 1
                state["most_ahead"] = max(state["most_ahead"], state["pulled"] - state["finished"])
            yield i

    def one(i: int) -> int:
        with lock:
            state["finished"] += 1
        return 1

    assert run_parallel(items(), one, 4, threading.Event()) == 2000
    assert state["most_ahead"] <= 2 * 4 + 1


def test_run_parallel_raises_the_first_failure_and_stops_the_rest() -> None:
    from fetcher.errors import Interrupted
    from fetcher.job.transfer import run_parallel

    ran: list[int] = []

    def one(i: int) -> int:
        ran.append(i)
        if i == 3:
            raise ValueError("broken")
        return 1

    with pytest.raises(ValueError, match="broken"):
        run_parallel(range(1000), one, 2, threading.Event())
    assert len(ran) < 20
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Interrupted):
        run_parallel(range(10), lambda i: 1, 2, cancel)


def test_no_claim_while_path_base_has_too_little_free_space(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil
    from types import SimpleNamespace
    from typing import Any

    from fetcher import source as source_module
    from fetcher.models import ClaimOffer, ClaimResult
    from fetcher.quarantine import Quarantine
    from fetcher.statedir import StateDir

    asked: list[ClaimOffer] = []

    def claim_jobs(offer: ClaimOffer, **_: Any) -> ClaimResult:
        asked.append(offer)
        return ClaimResult()

    api = SimpleNamespace(claim_jobs=claim_jobs)
    settings = SimpleNamespace(
        min_free_disk_mb=1024, path_base=tmp_path, state_dir=StateDir.of(tmp_path)
    )
    deps: Any = SimpleNamespace(
        settings=settings,
        api=api,
        metrics=SimpleNamespace(claim_succeeded=lambda: None, set_claims_paused=lambda _r: None),
        quarantine=Quarantine(3),
        gpus=None,
    )
    source = source_module.ApiJobSource(deps, None, None)  # type: ignore[arg-type]
    free = {"mb": 100}
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _p: SimpleNamespace(free=free["mb"] * 2**20, total=0, used=0)
    )
    offer = ClaimOffer(memory=1000, cpu_cores=1)
    why = "100 MB free under PATH_BASE (MIN_FREE_DISK_MB=1024)"
    with caplog.at_level("INFO"):
        assert source.claim(offer, threading.Event()).paused == why
        assert source.claim(offer, threading.Event()).paused == why
        assert asked == []  # the API was not asked
        assert source.paused == why  # shown by `fetcher status`
        free["mb"] = 5000
        assert source.claim(offer, threading.Event()).paused is None
        assert asked == [offer] and source.paused is None

        def unreadable(_p: object) -> object:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(shutil, "disk_usage", unreadable)
        assert "PATH_BASE cannot be read" in (source.claim(offer, threading.Event()).paused or "")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"worker: claiming no job: {why}",
        "worker: claiming again (5000 MB free under PATH_BASE)",
        "worker: claiming no job: PATH_BASE cannot be read: [Errno 13] Permission denied",
    ]


def test_status_shows_why_claiming_is_paused() -> None:
    from fetcher.status import render

    info = {
        "path_base": "/data",
        "daemon_running": True,
        "heartbeat_age_s": 1.0,
        "daemon": {"fetcher_id": "f", "claims_paused": "100 MB free under PATH_BASE"},
        "running": [],
        "reports_pending": [],
        "recent": [],
    }
    assert "claiming paused: 100 MB free under PATH_BASE" in render(info).splitlines()
    info["daemon"] = {"fetcher_id": "f", "claims_paused": None}
    assert "claiming paused" not in render(info)
