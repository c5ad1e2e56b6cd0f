"""Final statuses that must not be lost: kept on disk until the API has them, also across restarts."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fetcher.errors import ApiError, JobGone
from fetcher.models import JobStatus

log = logging.getLogger(__name__)

Send = Callable[[str, JobStatus, str | None], None]
MAX_AGE_S = 7 * 24 * 3600


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class Outbox:
    def __init__(self, directory: Path, send: Send) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.send = send
        self._waiting_logged: set[str] = set()
        # A job thread's report() and the loop's flush() may reach one entry at once: one delivers it.
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def report(self, job_id: str, status: JobStatus, details: str | None) -> bool:
        """Keep the final status on disk, then try to deliver it. True if delivered now."""
        write_json_atomic(
            self.dir / f"{job_id}.json",
            {"job_id": job_id, "status": status.value, "details": details, "since": time.time()},
        )
        return self._deliver(self.dir / f"{job_id}.json")

    def pending(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def flush(self) -> None:
        """Try every kept final status once more."""
        for path in sorted(self.dir.glob("*.json")):
            self._deliver(path)

    def _deliver(self, path: Path) -> bool:
        with self._lock:
            if path.name in self._in_flight:
                return False  # the other caller is delivering it
            self._in_flight.add(path.name)
        try:
            return self._deliver_once(path)
        finally:
            with self._lock:
                self._in_flight.discard(path.name)

    def _deliver_once(self, path: Path) -> bool:
        try:
            entry = json.loads(path.read_text())
            job_id, status, details = (
                str(entry["job_id"]),
                JobStatus(entry["status"]),
                entry.get("details"),
            )
        except FileNotFoundError:
            return True  # delivered by the other caller since flush() listed it
        except (OSError, ValueError, KeyError) as exc:
            log.error("outbox: dropping unreadable entry %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return False
        try:
            self.send(job_id, status, details)
        except JobGone:
            log.warning(
                "job %s: final status %s not delivered: the job is no longer ours",
                job_id,
                status.value,
            )
        except ApiError as exc:
            age = time.time() - float(entry.get("since", time.time()))
            if age > MAX_AGE_S:
                log.error(
                    "job %s: giving up on final status %s after %.0f h: %s",
                    job_id,
                    status.value,
                    age / 3600,
                    exc,
                )
            else:
                if job_id not in self._waiting_logged:
                    log.warning(
                        "job %s: final status %s kept until the API takes it: %s",
                        job_id,
                        status.value,
                        exc,
                    )
                    self._waiting_logged.add(job_id)
                return False
        else:
            held = time.time() - float(entry.get("since", time.time()))
            log.info(
                "job %s: reported %s%s",
                job_id,
                status.value,
                f" (held {held:.0f} s)" if held > 5 else "",
            )
            self._waiting_logged.discard(job_id)
        path.unlink(missing_ok=True)
        return True


class Journal:
    """The jobs this fetcher is working on, on disk: what a restart after a crash must clean up."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, job_id: str) -> None:
        write_json_atomic(self.dir / f"{job_id}.json", {"job_id": job_id, "since": time.time()})

    def remove(self, job_id: str) -> None:
        (self.dir / f"{job_id}.json").unlink(missing_ok=True)

    def entries(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))
