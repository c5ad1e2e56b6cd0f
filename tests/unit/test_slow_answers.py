"""Review finding: an answer that trickles in (a byte now and then, each well within the read
timeout) was read for ever: the read timeout bounds each recv, not the answer. Every API call
reads its whole body through `Http.send`, so a slow or hostile server could hold the keep-alive
(whose `stop()` joins it without a timeout, so the job thread and its slot), the deliverer (every
other report behind it) or the claim loop indefinitely. An answer must arrive within a deadline.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import Interrupted

Answer = Callable[[socket.socket, bytes, threading.Event], None]


@contextlib.contextmanager
def serving(answer: Answer) -> Iterator[str]:
    """A raw HTTP server on 127.0.0.1 (its base URL): each connection's first bytes are handed to
    `answer`, in a thread of its own, with the event that ends the test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            answer(conn, conn.recv(65536), stop)

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        srv.close()


def trickle(conn: socket.socket, every_s: float, stop: threading.Event) -> None:
    """Send a byte of the body now and then, each well within any read timeout."""
    while not stop.is_set():
        conn.sendall(b" ")
        time.sleep(every_s)


@pytest.fixture
def trickler() -> Iterator[str]:
    """An HTTP server that sends its headers at once, then one byte of body every 0.1 s."""

    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        trickle(conn, 0.1, stop)

    with serving(answer) as base:
        yield f"{base}/jobs"


def test_a_trickling_answer_is_given_up_within_a_deadline(trickler: str) -> None:
    http = Http(connect_timeout_s=1.0, read_timeout_s=1.0, retry_s=0)
    http.answer_deadline_s = 2.0
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            http.send("GET", trickler, what="claim jobs")
            outcome["result"] = "answered"
        except Exception as exc:
            outcome["result"] = exc

    started = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(8)
    assert not t.is_alive(), "still reading the answer after 8 s (it trickles for 10000 s)"
    assert time.monotonic() - started < 8
    assert isinstance(outcome["result"], Exception), outcome


@pytest.fixture
def trickling_file() -> Iterator[str]:
    """An API whose download URL sends 1 MB of headers-promised body one byte every 0.05 s."""
    base: list[str] = []

    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"/url " in request.split(b"\r\n", 1)[0]:
            body = json.dumps(
                {"method": "get", "url": f"{base[0]}/slow", "headers": {}, "data": {}}
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
        trickle(conn, 0.05, stop)

    with serving(answer) as url:
        base.append(url)
        yield url


def test_a_trickling_download_stops_soon_after_the_job_is_cancelled(
    trickling_file: str, tmp_path: Path
) -> None:
    # Review finding: a download read 1 MB chunks, so a body trickling in (each byte well within
    # the read timeout) was not cancellable until a whole chunk had arrived (here: 14 hours).
    api = WorkerApi(trickling_file, FixedToken("t"), Http(retry_s=0, read_timeout_s=5.0))
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def download() -> None:
        with (tmp_path / "in.bin").open("wb") as out:
            try:
                outcome["result"] = api.files.download_file("data/x.bin", out, interrupt=cancel)
            except Exception as exc:
                outcome["result"] = exc

    t = threading.Thread(target=download, daemon=True)
    t.start()
    time.sleep(1.0)
    cancel.set()
    cancelled = time.monotonic()
    t.join(8)
    assert not t.is_alive(), "still downloading 8 s after the cancel"
    assert time.monotonic() - cancelled < 2
    assert isinstance(outcome["result"], Interrupted), outcome
