"""process_job with fakes: whatever fails, the job's keep-alive ends with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.fakes import StatusSink


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
    sink = StatusSink()
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
