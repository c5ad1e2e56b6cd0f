"""Whether the server still has a job for this worker: the rules, read by the keep-alive (an
adopted job's first look: `still_ours`; a running job's after its pings failed: `runs_on`), crash
recovery and the deliverer (`report_fate`).

The server re-queues a job it has not heard of for its failure timeout, and may give it to another
worker; a user may delete it. A PUT of the old worker then either answers 404 (the job is gone) or,
when nobody took it meanwhile, silently takes the job back. So before running on, or reporting, a
job whose fate is uncertain, the fetcher asks (`GET /jobs/{id}/status`) and reads the answer here.
"""

from __future__ import annotations

from enum import Enum

from fetcher.models import JobStatus


def still_ours(status: JobStatus | None) -> bool:
    """A job the server has as `status` (None: it answered 404) is still ours to run: it is not
    gone, not re-queued (`queued`) and not ended (`finished`, `error`)."""
    return status is not None and status != JobStatus.queued and not status.is_final


def runs_on(status: JobStatus | None) -> bool:
    """A job this worker runs now, whose pings did not get through for a while, that the server
    has as `status` (None: 404), runs on unless it is gone or ended (a PUT would overwrite the
    server's final `error`). A job re-queued that no other worker took yet (`queued`) is taken
    back by the next PUT (had another taken it, the server would answer 404 to it and to that
    PUT): the hours its GPU already worked are not thrown away for a short outage."""
    return status is not None and not status.is_final


class ReportFate(Enum):
    """What to do with a report whose earlier try may have reached the server."""

    send = "send"
    already_there = "already there"
    unwanted = "unwanted"


def report_fate(current: JobStatus, report: JobStatus) -> ReportFate:
    """The server has the job as `current`; the fetcher wants to send `report`. A final status is
    never overwritten, and a re-queued job only takes a real result (`finished`): an `error` or a
    hand-back of a job the server already re-queued would fail or re-queue it twice."""
    if current == report:
        return ReportFate.already_there
    if current.is_final or (current == JobStatus.queued and report != JobStatus.finished):
        return ReportFate.unwanted
    return ReportFate.send
