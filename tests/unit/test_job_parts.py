"""Keep-alive, workspace path safety, outbox, settings: with fakes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from fetcher.errors import ApiUnavailable, ConfigError, InvalidJobSpec, JobGone
from fetcher.job.keepalive import Cancel, KeepAlive
from fetcher.job.workspace import Workspace
from fetcher.models import HandlerSpecs, JobSpecs, JobStatus
from fetcher.outbox import Outbox
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


def test_keepalive_pings_every_interval_and_sends_changes_at_once() -> None:
    sink = Sink()
    ka = KeepAlive(sink, "1", 0.2, Cancel()).start(JobStatus.preprocessing)
    time.sleep(0.5)
    ka.set_status(JobStatus.running)
    time.sleep(0.05)
    ka.stop()
    statuses = [s for _, s in sink.sent]
    assert statuses[:3] == ["preprocessing"] * 3 and statuses[-1] == "running"


def test_keepalive_404_cancels_the_job_as_gone() -> None:
    cancel = Cancel()
    ka = KeepAlive(Sink([None, JobGone("gone", 404)]), "1", 0.05, cancel).start(JobStatus.running)
    assert cancel.event.wait(2)
    assert cancel.gone and "gone" in (cancel.reason or "")
    ka.stop()


def test_keepalive_transient_failures_keep_pinging() -> None:
    sink = Sink([ApiUnavailable("down"), ApiUnavailable("down"), None, None])
    cancel = Cancel()
    ka = KeepAlive(sink, "1", 0.05, cancel).start(JobStatus.running)
    time.sleep(0.4)
    ka.stop()
    assert len(sink.sent) >= 4 and not cancel.is_set() and ka.pings >= 2


def test_keepalive_unexpected_error_is_handed_to_the_pipeline() -> None:
    cancel = Cancel()
    ka = KeepAlive(Sink([RuntimeError("bug in sink")]), "1", 0.05, cancel).start(JobStatus.running)
    assert cancel.event.wait(2)
    assert "keep-alive failed" in (cancel.reason or "") and not cancel.gone
    ka.stop()


def test_keepalive_stop_is_immediate_with_a_long_interval() -> None:
    ka = KeepAlive(Sink(), "1", 3600, Cancel()).start(JobStatus.running)
    time.sleep(0.05)
    started = time.monotonic()
    ka.stop()
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "..", "C:/x"])
def test_workspace_refuses_paths_that_leave_it(tmp_path: Path, path: str) -> None:
    ws = Workspace.for_job("7", tmp_path, tmp_path)
    with pytest.raises(InvalidJobSpec, match="job 7"):
        ws.inside(path, "handler.files_down")


def test_workspace_refuses_a_symlink_out(tmp_path: Path) -> None:
    ws = Workspace.for_job("7", tmp_path, tmp_path)
    ws.create()
    os.symlink("/etc", ws.path / "link")
    with pytest.raises(InvalidJobSpec, match="leaves the job directory"):
        ws.inside("link/passwd", "handler.files_up['output']")
    assert ws.inside("a/c.txt", "x") == (ws.path / "a/c.txt").resolve()


def test_workspace_validates_the_whole_spec_and_bad_queue_ids(tmp_path: Path) -> None:
    ws = Workspace.for_job("7", tmp_path, tmp_path)
    spec = JobSpecs(handler=HandlerSpecs(image_url="i", files_up={"output": "/abs"}))
    with pytest.raises(InvalidJobSpec, match="files_up"):
        ws.validate(spec)
    with pytest.raises(InvalidJobSpec, match="queue id"):
        Workspace.for_job("../7", tmp_path, tmp_path)


def test_outbox_keeps_undelivered_statuses_on_disk_and_delivers_later(tmp_path: Path) -> None:
    delivered: list[tuple[str, str, str | None]] = []
    up = {"ok": False}

    def send(job_id: str, status: JobStatus, details: str | None) -> None:
        if not up["ok"]:
            raise ApiUnavailable("down")
        delivered.append((job_id, status.value, details))

    box = Outbox(tmp_path / "out", send)
    assert box.report("4", JobStatus.finished, "exit_code: 0") is False
    assert box.pending() == ["4"]
    again = Outbox(tmp_path / "out", send)  # a restart
    up["ok"] = True
    again.flush()
    assert delivered == [("4", "finished", "exit_code: 0")] and again.pending() == []


def test_outbox_drops_statuses_of_jobs_that_are_gone(tmp_path: Path) -> None:
    def send(job_id: str, status: JobStatus, details: str | None) -> None:
        raise JobGone("gone", 404)

    box = Outbox(tmp_path, send)
    box.report("4", JobStatus.error, "x")
    assert box.pending() == []


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
