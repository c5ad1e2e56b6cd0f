"""The one owner of each job's durable state: PATH_BASE/.fetcher/jobs.sqlite.

A job goes `claimed` → `started` (its container's id) → `reporting` (a final status, or a hand-back,
waiting for the deliverer) → delivered (its row is gone; one line stays in `history`). Each step is
written before it is taken; crash recovery reads it at start, the deliverer reads and updates the
reports, `fetcher status` reads it all from another process.

Why the standard library's sqlite3 rather than a file per job: one transaction updates a report
and its try count together (no torn JSON after a crash mid-write, no partial rename), commits are
durable (`synchronous=FULL`), the daemon's threads share one connection behind one lock, and in WAL
mode `fetcher status` reads while the daemon writes, neither blocking the other. PATH_BASE must be
a local file system (it is also bind-mounted into the job containers).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.errors import FetcherError
from fetcher.lifecycle import Phase, Stage
from fetcher.models import JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,
    spec TEXT,
    name TEXT,
    cpu_cores INTEGER NOT NULL DEFAULT 0,
    memory_mb INTEGER NOT NULL DEFAULT 0,
    gpus TEXT NOT NULL DEFAULT '',
    container_id TEXT,
    stage TEXT NOT NULL DEFAULT '',
    claimed_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    report_status TEXT,
    report_details TEXT,
    report_since REAL,
    report_tries INTEGER NOT NULL DEFAULT 0,
    report_verify INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
HISTORY_KEEP = 200
REPORTING = Phase.reporting.value


class StoreError(FetcherError):
    """The job store could not be read or written (disk full, a lost mount, a damaged file)."""


@dataclass(frozen=True)
class Report:
    """A status to deliver once: a final one, or the hand-back `queued`."""

    job_id: str
    status: JobStatus
    details: str | None
    since: float
    tries: int = 0
    verify: bool = False  # ask the server before sending (a try may have landed already)
    next_try_at: float = 0.0


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    phase: Phase
    spec: dict[str, Any] | None
    name: str | None
    cpu_cores: int
    memory_mb: int
    gpus: list[str] = field(default_factory=list)
    container_id: str | None = None
    stage: Stage = Stage.claimed
    claimed_at: float = 0.0
    updated_at: float = 0.0
    report: Report | None = None


class JobStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    str(path), check_same_thread=False, timeout=30, isolation_level=None
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"job store {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; sqlite's errors become StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"job store {self.path}: {exc}") from None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                cur.row_factory = sqlite3.Row
                return list(cur.fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"job store {self.path}: {exc}") from None

    # --- a job's steps -------------------------------------------------------------------------
    def claimed(
        self,
        job_id: str,
        spec: dict[str, Any],
        *,
        name: str | None,
        cpu_cores: int,
        memory_mb: int,
        gpus: list[str],
    ) -> Report | None:
        """A job was claimed. A report still pending under the same id (an earlier job the server
        has moved on from: deleted and its id reused, or timed out and re-queued) is replaced;
        it is returned so that the caller can say so."""
        now = time.time()
        with self._tx() as db:
            old = db.execute(
                "SELECT report_status, report_details, report_since FROM jobs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            db.execute(
                "INSERT INTO jobs (job_id, phase, spec, name, cpu_cores, memory_mb, gpus,"
                " claimed_at, updated_at, stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    Phase.claimed.value,
                    json.dumps(spec),
                    name,
                    cpu_cores,
                    memory_mb,
                    ",".join(gpus),
                    now,
                    now,
                    Stage.claimed.value,
                ),
            )
        if old is None or old[0] is None:
            return None
        return Report(job_id, JobStatus(old[0]), old[1], float(old[2] or now))

    def started(self, job_id: str, container_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET phase = ?, container_id = ?, updated_at = ? WHERE job_id = ?",
                (Phase.started.value, container_id, time.time(), job_id),
            )

    def stage(self, job_id: str, stage: Stage) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET stage = ?, updated_at = ? WHERE job_id = ?",
                (stage.value, time.time(), job_id),
            )

    def forget(self, job_id: str) -> None:
        """The job is not ours any more and nothing is to be reported."""
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    # --- reports -------------------------------------------------------------------------------
    def report(
        self, job_id: str, status: JobStatus, details: str | None, *, verify: bool = False
    ) -> Report:
        """Keep a status to deliver (replacing any earlier one for the job)."""
        now = time.time()
        with self._tx() as db:
            updated = db.execute(
                "UPDATE jobs SET phase = ?, report_status = ?, report_details = ?, report_since = ?,"
                " report_tries = 0, report_verify = ?, next_try_at = 0, stage = ?,"
                " updated_at = ? WHERE job_id = ?",
                (
                    REPORTING,
                    status.value,
                    details,
                    now,
                    int(verify),
                    Stage.reporting.value,
                    now,
                    job_id,
                ),
            ).rowcount
            if not updated:
                db.execute(
                    "INSERT INTO jobs (job_id, phase, claimed_at, updated_at, stage, report_status,"
                    " report_details, report_since, report_verify) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        REPORTING,
                        now,
                        now,
                        Stage.reporting.value,
                        status.value,
                        details,
                        now,
                        int(verify),
                    ),
                )
        return Report(job_id, status, details, now, 0, verify)

    def reports(self, *, due_by: float | None = None) -> list[Report]:
        sql = "SELECT * FROM jobs WHERE phase = ?"
        args: tuple[Any, ...] = (REPORTING,)
        if due_by is not None:
            sql += " AND next_try_at <= ?"
            args += (due_by,)
        return [_report(r) for r in self._read(sql + " ORDER BY report_since", args)]

    def next_due(self) -> float | None:
        rows = self._read("SELECT MIN(next_try_at) AS t FROM jobs WHERE phase = ?", (REPORTING,))
        return None if not rows or rows[0]["t"] is None else float(rows[0]["t"])

    # A report is named by its job id and `since`: the job id alone may already name a newer job
    # (the id claimed anew), whose row a stale report must never change or delete. With `since`
    # None, the job id alone is meant.
    def is_current(self, job_id: str, since: float) -> bool:
        """Is this report (job id and `since`) still the one kept for the job?"""
        return bool(
            self._read(
                "SELECT 1 FROM jobs WHERE job_id = ? AND phase = ? AND report_since = ?",
                (job_id, REPORTING, since),
            )
        )

    def trying(self, job_id: str, since: float | None = None) -> None:
        """Count a try before it is made: after a crash, the next try asks the server first."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET report_tries = report_tries + 1 WHERE job_id = ?"
                " AND (? IS NULL OR (phase = ? AND report_since = ?))",
                (job_id, since, REPORTING, since),
            )

    def retry_at(self, job_id: str, when: float, since: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET next_try_at = ? WHERE job_id = ?"
                " AND (? IS NULL OR (phase = ? AND report_since = ?))",
                (when, job_id, since, REPORTING, since),
            )

    def retry_all_now(self) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET next_try_at = 0 WHERE phase = ?", (REPORTING,))

    def done(
        self, job_id: str, outcome: str, details: str | None, since: float | None = None
    ) -> None:
        """The report was delivered (or dropped, `outcome` says which): forget the job (only if
        the row is still this report, when `since` names it)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM jobs WHERE job_id = ?"
                " AND (? IS NULL OR (phase = ? AND report_since = ?))",
                (job_id, since, REPORTING, since),
            )
            db.execute(
                "INSERT INTO history (job_id, at, outcome, details) VALUES (?, ?, ?, ?)",
                (job_id, time.time(), outcome, (details or "")[:2000]),
            )
            db.execute(
                "DELETE FROM history WHERE id <= (SELECT MAX(id) FROM history) - ?",
                (HISTORY_KEEP,),
            )

    # --- reading ---------------------------------------------------------------------------------
    def jobs(self) -> list[JobRecord]:
        return [_record(r) for r in self._read("SELECT * FROM jobs ORDER BY claimed_at")]

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM history ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value ="
                " excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else None


def _report(r: sqlite3.Row) -> Report:
    return Report(
        r["job_id"],
        JobStatus(r["report_status"]),
        r["report_details"],
        float(r["report_since"] or 0),
        int(r["report_tries"]),
        bool(r["report_verify"]),
        float(r["next_try_at"]),
    )


def _record(r: sqlite3.Row) -> JobRecord:
    spec = None
    if r["spec"]:
        try:
            loaded = json.loads(r["spec"])
            spec = loaded if isinstance(loaded, dict) else None
        except ValueError:
            spec = None
    return JobRecord(
        job_id=r["job_id"],
        phase=Phase(r["phase"]),
        spec=spec,
        name=r["name"],
        cpu_cores=int(r["cpu_cores"]),
        memory_mb=int(r["memory_mb"]),
        gpus=[g for g in (r["gpus"] or "").split(",") if g],
        container_id=r["container_id"],
        stage=_stage(r["stage"]),
        claimed_at=float(r["claimed_at"]),
        updated_at=float(r["updated_at"]),
        report=_report(r) if r["phase"] == REPORTING and r["report_status"] else None,
    )


def _stage(value: str | None) -> Stage:
    try:
        return Stage(value or Stage.claimed)
    except ValueError:  # written by another version
        return Stage.claimed
