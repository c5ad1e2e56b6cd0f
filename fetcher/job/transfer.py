"""Inputs in (download) and outputs out (upload): streamed, several files at once, progress in the log.

Every error names its file (`input data/calib.mat: ...`, `output model/ckpt/last.pt: ...`). An input
the server cannot send is the job's problem (TransferError: `error`); an API out of reach for longer
than the retry budget, a refused login or a full disk is the worker's (the job is handed back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from fetcher.api.files import FileRequests
from fetcher.errors import Interrupted, JobGone, as_fetcher_error
from fetcher.job.workspace import Input, Layout, OutputFile, OutputLimit, Workspace
from fetcher.models import UploadType

log = logging.getLogger(__name__)

T = TypeVar("T")
PROGRESS_EVERY_S = 10.0
LARGE_FILE = 64 * 1024 * 1024
UPLOAD_NICENESS = 10
CONTAINER_LOG = "container.log"


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


def yield_cpu() -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread): an upload runs beside
    the next job, whose start (the engine's create and start) must not wait for CPU behind it
    on a box of few cores."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)


def run_parallel(
    items: Iterable[T],
    fn: Callable[[T], int],
    workers: int,
    cancel: threading.Event,
    *,
    background: bool = False,
) -> int:
    """Run `fn` over `items` on `workers` threads; the first failure stops the rest and is raised.
    At most twice `workers` items are handed to the threads at a time (100,000 outputs must not
    become 100,000 futures at once). `background`: the threads yield the CPU to everything else."""
    stop = threading.Event()

    def guarded(item: T) -> int:
        if stop.is_set() or cancel.is_set():
            raise Interrupted("transfer stopped")
        return fn(item)

    total = 0
    failure: BaseException | None = None
    todo = iter(items)
    with ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="transfer",
        initializer=yield_cpu if background else None,
    ) as pool:
        running: set[Future[int]] = set()
        while True:
            while failure is None and len(running) < 2 * workers:
                item = next(todo, _END)
                if item is _END:
                    break
                running.add(pool.submit(guarded, item))  # type: ignore[arg-type]
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is None:
                    total += future.result()
                elif failure is None:
                    failure = exc
                    stop.set()
    if failure is not None:
        raise failure
    return total


_END = object()


def _named(subject: str, exc: Exception) -> Exception:
    """The same failure, its message starting with the file it is about (a stop or a job gone keep
    their own words). A failure of this box's disk becomes WorkerTrouble (`as_fetcher_error`)."""
    err = as_fetcher_error(exc)
    if err is None or isinstance(err, JobGone | Interrupted):
        return exc
    return err.named(subject)


def download_inputs(
    api: FileRequests,
    job_id: str,
    layout: Layout,
    ws: Workspace,
    *,
    cancel: threading.Event,
    workers: int = 4,
    retry_s: float | None = None,
    counted: Callable[[int], None] | None = None,
) -> int:
    """Download every input to its place in the job directory. Returns the bytes.
    Raises TransferError, ApiUnavailable, AuthError, WorkerTrouble, Interrupted."""
    started = time.monotonic()

    def one(inp: Input) -> int:
        try:
            size = ws.write_input(
                inp,
                lambda fh: api.download_file(
                    inp.file_id,
                    fh,
                    interrupt=cancel,
                    progress=ProgressLog(f"job {job_id}: {inp.rel}"),
                    retry_s=retry_s,
                ),
            )
        except Exception as exc:  # noqa: BLE001 - named, then raised again
            raise _named(f"input {inp.rel}", exc) from None
        if counted:
            counted(size)
        return size

    total = run_parallel(layout.inputs, one, workers, cancel)
    _summary(job_id, "downloaded", len(layout.inputs), total, started)
    return total


def with_container_log(
    job_id: str, layout: Layout, files: list[OutputFile], container_log: Path | None
) -> tuple[list[OutputFile], OutputFile | None]:
    """`files` with the container's log added as `<log dir>/container.log` (which replaces a file
    of the job's own of that name), and that entry; unchanged when there is no log directory."""
    log_dir = layout.output_dir(UploadType.log)
    if log_dir is None or container_log is None or not container_log.is_file():
        return files, None
    ours = OutputFile(UploadType.log, log_dir.rel, CONTAINER_LOG, (), container_log.stat().st_size)
    key = (ours.kind, ours.base_path, ours.name)
    kept = [f for f in files if (f.kind, f.base_path, f.name) != key]
    if len(kept) != len(files):
        log.warning(
            "job %s: not uploading the job's own %s/%s: the container's log goes there",
            job_id,
            log_dir.rel,
            CONTAINER_LOG,
        )
    return [*kept, ours], ours


def upload_outputs(
    api: FileRequests,
    job_id: str,
    layout: Layout,
    ws: Workspace,
    *,
    container_log: Path | None,
    cancel: threading.Event,
    workers: int = 4,
    retry_s: float | None = None,
    counted: Callable[[int], None] | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
) -> int:
    """Upload every file under each `files_up` directory (`base_path`: its directory relative to
    the job directory) and the container's log (`with_container_log`). Outputs over `max_files` or
    `max_bytes`: only the container's log is uploaded, then OutputLimit is raised.
    Raises JobGone, TransferError, ApiUnavailable, AuthError, Interrupted."""
    started = time.monotonic()
    too_much: OutputLimit | None = None
    try:
        found = ws.output_files(layout, max_files=max_files, max_bytes=max_bytes)
    except OutputLimit as exc:
        too_much, found = exc, []
    files, ours = with_container_log(job_id, layout, found, container_log)
    how: dict[str, Any] = {"interrupt": cancel, "retry_s": retry_s}

    def one(item: OutputFile) -> int:
        subject = f"output {item.base_path}/{item.name}"
        try:
            fh = (
                container_log.open("rb") if item is ours and container_log else ws.open_output(item)
            )
            if fh is None:
                log.warning("job %s: %s is no longer a regular file; skipped", job_id, subject)
                return 0
            with fh:
                size = api.upload_file(job_id, fh, item.name, item.kind, item.base_path, **how)
        except Exception as exc:  # noqa: BLE001 - named, then raised again
            raise _named(subject, exc) from None
        if counted:
            counted(size)
        return size

    total = run_parallel(files, one, workers, cancel, background=True)
    _summary(job_id, "uploaded", len(files), total, started)
    if too_much is not None:
        raise too_much
    return total


def _summary(job_id: str, verb: str, count: int, size: int, started: float) -> None:
    if not count:
        return
    elapsed = max(time.monotonic() - started, 1e-6)
    log.info(
        "job %s: %s %d files (%s, %s/s)", job_id, verb, count, human(size), human(size / elapsed)
    )
