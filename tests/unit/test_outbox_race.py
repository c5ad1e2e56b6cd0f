"""A final status is sent once, also when a job thread's report() and the loop's flush() meet on it.

Found by the Slurm array test: a job reported `finished` twice, 3 ms apart, by one fetcher."""

from __future__ import annotations

import threading
from pathlib import Path

from fetcher.models import JobStatus
from fetcher.outbox import Outbox


def test_report_and_flush_at_once_send_the_final_status_once(tmp_path: Path) -> None:
    # Given an API that answers slowly
    sent: list[str] = []
    in_send, release = threading.Event(), threading.Event()

    def send(job_id: str, status: JobStatus, details: str | None) -> None:
        sent.append(job_id)
        in_send.set()
        assert release.wait(5)

    outbox = Outbox(tmp_path / "outbox", send)
    # When a job thread reports its final status, and the loop flushes while that PUT is under way
    reporter = threading.Thread(
        target=outbox.report, args=("7", JobStatus.finished, "exit_code: 0")
    )
    reporter.start()
    assert in_send.wait(5)
    flusher = threading.Thread(target=outbox.flush)
    flusher.start()
    flusher.join(5)
    release.set()
    reporter.join(5)
    # Then it was sent once, and nothing is kept
    assert sent == ["7"]
    assert outbox.pending() == []


def test_flush_after_the_report_delivered_it_sends_nothing_more(tmp_path: Path) -> None:
    sent: list[str] = []
    outbox = Outbox(tmp_path / "outbox", lambda j, s, d: sent.append(j))
    outbox.report("8", JobStatus.error, "exit_code: 1")
    outbox.flush()
    assert sent == ["8"] and outbox.pending() == []
