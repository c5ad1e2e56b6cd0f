"""Review finding: an answer that trickles in (a byte now and then, each well within the read
timeout) was read for ever: the read timeout bounds each recv, not the answer. Every API call
reads its whole body through `Http.send`, so a slow or hostile server could hold the keep-alive
(whose `stop()` joins it without a timeout, so the job thread and its slot), the deliverer (every
other report behind it) or the claim loop indefinitely. An answer must arrive within a deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fetcher.api.http import Http


@pytest.fixture
def trickler() -> Iterator[str]:
    """An HTTP server that sends its headers at once, then one byte of body every 0.1 s."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
                try:
                    while not stop.is_set():
                        conn.sendall(b" ")
                        time.sleep(0.1)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/jobs"
    stop.set()
    t.join(5)
    srv.close()


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
