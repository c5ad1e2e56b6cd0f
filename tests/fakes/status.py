"""The server's side of the status calls (`put_status`, `get_status`), as the deliverer and the
keep-alive see it: scripted per job, every call recorded."""

from __future__ import annotations

import threading
import time

from fetcher.errors import ApiUnavailable, JobGone
from fetcher.models import JobStatus


class StatusServer:
    """A server that remembers each job's status. `put_plan` per job: what each PUT does, in
    order (the last one for every PUT after it): "ok", "lost" (recorded, but the answer never
    arrives), "down" (not recorded), "gone" (404). A job in `gone` is 404 to every call; one in
    `unknown` (an id the server no longer knows) is 500 to a PUT and 404 to a GET, as on the real
    server."""

    def __init__(self) -> None:
        self.status: dict[str, JobStatus] = {}
        self.put_plan: dict[str, list[str]] = {}
        self.gone: set[str] = set()
        self.unknown: set[str] = set()
        self.puts: list[tuple[str, JobStatus]] = []
        self.gets: list[str] = []
        self.received: list[tuple[str, JobStatus]] = []  # PUTs that took effect
        self._lock = threading.Lock()

    def put_status(
        self,
        job_id: str,
        status: JobStatus,
        runtime_details: str | None = None,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None:
        with self._lock:
            self.puts.append((job_id, status))
            plan = self.put_plan.get(job_id) or ["ok"]
            what = plan.pop(0) if len(plan) > 1 else plan[0]
            if job_id in self.gone or what == "gone":
                raise JobGone(f"job {job_id}: gone", 404)
            if what == "down" or job_id in self.unknown:
                raise ApiUnavailable("HTTP 500 Internal Server Error", 500)
            self.status[job_id] = status
            self.received.append((job_id, status))
            if what == "lost":
                raise ApiUnavailable("ConnectionError (the answer was lost)")

    def get_status(
        self, job_id: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> JobStatus:
        with self._lock:
            self.gets.append(job_id)
            if job_id in self.gone or job_id in self.unknown:
                raise JobGone(f"job {job_id}: gone", 404)
            return self.status.get(job_id, JobStatus.running)


class StatusSink:
    """A server whose PUTs answer from one table, whatever the job: None = ok, an exception =
    raised (once the table is empty, every PUT is ok). Every PUT is recorded with its time; GET
    answers `running`."""

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
