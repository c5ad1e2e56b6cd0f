"""The container's output, while it runs: streamed from its attach socket into a log file in
the fetcher's state directory (up to JOB_LOG_MAX_MB), with the decoded tail kept for the report."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


def hang_up(sock: Any) -> None:
    """Close an attach socket for good (the object docker-py hands out may wrap the socket)."""
    if sock is None:
        return
    for s in (getattr(sock, "_sock", None), sock):
        if s is None:
            continue
        with contextlib.suppress(Exception):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            s.close()


class LogFollower:
    """Streams the container's stdout and stderr, while it runs, into a file (up to a cap) and
    keeps the decoded tail for the final status.

    The stream is the container's attach stream, opened before it starts: every byte the job
    writes comes through it (the engine's own log is bounded and rotates: a follower of it that
    lags loses output; 30 MB printed at once came through as 6 MB). An attached client slows a
    writer that outruns it, so one thread only reads (the tail, and a bounded buffer) and hangs
    the stream up when it stops, and another writes the file: a slow or hung disk drops output
    (counted in the file), it never holds the job."""

    BUFFER_BYTES = 16 * 1024 * 1024  # read but not yet written

    def __init__(
        self,
        job_id: str,
        chunks: Iterable[bytes],
        dest: Path | None,
        max_bytes: int,
        tail_bytes: int,
        hang_up: Callable[[], None] = lambda: None,
    ) -> None:
        self.job_id = job_id
        self.chunks = chunks
        self.hang_up = hang_up  # closes the stream for good
        self.dest = dest
        self.max_bytes = max_bytes
        self.tail_bytes = tail_bytes
        self.written = 0
        self.dropped = 0  # past JOB_LOG_MAX_MB
        self.lost = 0  # the disk was slower than the job, or failed
        self._tail: deque[bytes] = deque()
        self._kept = 0
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._read_all = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="logs-read", daemon=True)
        self._writer = threading.Thread(target=self._write, name="logs-write", daemon=True)

    def start(self) -> LogFollower:
        self._writer.start()
        self._reader.start()
        return self

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._reader.join(timeout_s)
        self._writer.join(max(deadline - time.monotonic(), 0))

    def _read(self) -> None:
        try:
            for chunk in self.chunks:
                self._keep(chunk)
                with self._cond:
                    if self._buffered + len(chunk) > self.BUFFER_BYTES:
                        self.lost += len(chunk)
                        continue
                    self._buffer.append(chunk)
                    self._buffered += len(chunk)
                    self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the job goes on
            log.warning("job %s: could not read the container's output: %s", self.job_id, exc)
        finally:
            # an attach connection nobody reads would hold the job's writes: it is closed for good
            self.hang_up()
            with self._cond:
                self._read_all = True
                self._cond.notify()

    def _next(self) -> bytes | None:
        with self._cond:
            while not self._buffer and not self._read_all:
                self._cond.wait()
            if not self._buffer:
                return None
            chunk = self._buffer.popleft()
            self._buffered -= len(chunk)
            return chunk

    def _write(self) -> None:
        out: BinaryIO | None = None
        try:
            out = self._open()
            while (chunk := self._next()) is not None:
                if out is None:
                    continue
                room = self.max_bytes - self.written
                try:
                    if room > 0:
                        out.write(chunk[:room])
                        self.written += min(len(chunk), room)
                except OSError as exc:
                    log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
                    self.lost += len(chunk)
                    self._close(out)
                    out = None
                    continue
                self.dropped += max(len(chunk) - max(room, 0), 0)
        except Exception as exc:  # noqa: BLE001 - the reader goes on regardless
            log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
        finally:
            if out is not None:
                self._close(out)

    def _open(self) -> BinaryIO | None:
        if self.dest is None:
            return None
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.dest.unlink(missing_ok=True)
            return self.dest.open("xb")
        except OSError as exc:
            log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
            return None

    def _close(self, out: BinaryIO) -> None:
        with contextlib.suppress(OSError):
            if self.dropped:
                out.write(
                    f"\n[fetcher: {self.dropped} more bytes of output not kept (JOB_LOG_MAX_MB)]\n".encode()
                )
            if self.lost:
                out.write(
                    f"\n[fetcher: {self.lost} bytes of output lost: they came faster than the"
                    " disk took them, or the disk failed]\n".encode()
                )
            out.close()

    def _keep(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._kept += len(chunk)
        while len(self._tail) > 1 and self._kept - len(self._tail[0]) >= self.tail_bytes:
            self._kept -= len(self._tail.popleft())

    def tail(self) -> str:
        data = b"".join(self._tail)[-self.tail_bytes :]
        return data.decode("utf-8", errors="replace").strip()
