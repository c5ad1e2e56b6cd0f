"""Inputs in (download) and outputs out (upload): streamed, several files at once, progress in the log."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from fetcher.api.client import WorkerApi
from fetcher.errors import Interrupted, TransferError
from fetcher.job.workspace import Workspace
from fetcher.models import JobSpecs, UploadType

log = logging.getLogger(__name__)

T = TypeVar("T")
PROGRESS_EVERY_S = 10.0
LARGE_FILE = 64 * 1024 * 1024


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class ProgressLog:
    """Logs the progress and rate of a large transfer every PROGRESS_EVERY_S seconds."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S or (total or done) < LARGE_FILE:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        of = f" of {human(total)} ({100 * done / total:.0f} %)" if total else ""
        log.info("%s: %s%s at %s/s", self.subject, human(done), of, human(rate))


def run_parallel(
    items: Iterable[T], fn: Callable[[T], int], workers: int, cancel: threading.Event
) -> int:
    """Run `fn` over `items` on `workers` threads; the first failure stops the rest and is raised."""
    stop = threading.Event()

    def guarded(item: T) -> int:
        if stop.is_set() or cancel.is_set():
            raise Interrupted("transfer stopped")
        return fn(item)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(guarded, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            wait(futures)
            raise failed[0].exception()  # type: ignore[misc]
    return sum(f.result() for f in futures)


def download_inputs(
    api: WorkerApi,
    job_id: str,
    spec: JobSpecs,
    ws: Workspace,
    *,
    cancel: threading.Event,
    workers: int = 4,
) -> int:
    """Download every `files_down` entry to its path in the job directory. Returns the bytes.

    Raises InvalidJobSpec (unsafe path), TransferError, ApiUnavailable, AuthError, Interrupted.
    """
    entries = list((spec.handler.files_down or {}).items())
    started = time.monotonic()

    def one(entry: tuple[str, str]) -> int:
        rel, file_id = entry
        dest = ws.inside(rel, f"handler.files_down[{rel!r}]")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            return api.download_file(
                file_id, dest, interrupt=cancel, progress=ProgressLog(f"job {job_id}: {rel}")
            )
        except TransferError as exc:
            raise TransferError(f"input {rel}: {exc}") from None

    total = run_parallel(entries, one, workers, cancel)
    _summary(job_id, "downloaded", len(entries), total, started)
    return total


def output_files(spec: JobSpecs, ws: Workspace) -> list[tuple[UploadType, str, Path]]:
    """Every regular file under each `files_up` directory: (type, sub-path, file). Links are skipped."""
    found: list[tuple[UploadType, str, Path]] = []
    for kind, rel in (spec.handler.files_up or {}).items():
        root = ws.inside(rel, f"handler.files_up[{kind.value!r}]")
        if not root.is_dir():
            log.info("job %s: no %s directory %r to upload", ws.job_id, kind.value, rel)
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=False):
            sub = os.path.relpath(dirpath, root)
            for name in sorted(files):
                path = Path(dirpath, name)
                if path.is_symlink() or not path.is_file():
                    log.warning("job %s: not uploading %s: not a regular file", ws.job_id, path)
                    continue
                found.append((kind, "" if sub == "." else sub.replace(os.sep, "/"), path))
    return found


def upload_outputs(
    api: WorkerApi,
    job_id: str,
    spec: JobSpecs,
    ws: Workspace,
    *,
    cancel: threading.Event,
    workers: int = 4,
) -> int:
    """Upload every file under each `files_up` directory, with its sub-path as `base_path`.

    Raises JobGone, TransferError, ApiUnavailable, AuthError, Interrupted.
    """
    files = output_files(spec, ws)
    started = time.monotonic()

    def one(item: tuple[UploadType, str, Path]) -> int:
        kind, sub, path = item
        return api.upload_file(job_id, path, kind, sub, interrupt=cancel)

    total = run_parallel(files, one, workers, cancel)
    _summary(job_id, "uploaded", len(files), total, started)
    return total


def _summary(job_id: str, verb: str, count: int, size: int, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-6)
    log.info(
        "job %s: %s %d files (%s, %s/s)", job_id, verb, count, human(size), human(size / elapsed)
    )
