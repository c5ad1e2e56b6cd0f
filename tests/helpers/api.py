"""The fetcher's client in unit tests (against `responses`, or a raw HTTP server of the test's
own) and the plain-file transfers every client test uses."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import responses

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.models import UploadType

API = "http://api.test"
FIXED_TOKEN = "fixed-token-0123456789"
BEARER = f"Bearer {FIXED_TOKEN}"


def worker_api(url: str = API, *, token: str = FIXED_TOKEN, retry_s: float = 2.0) -> WorkerApi:
    """A client of the API at `url` with a fixed token, short backoffs and a `retry_s` budget."""
    return WorkerApi(url, FixedToken(token), Http(retry_s=retry_s, max_backoff_s=0.05))


def download_to(api: WorkerApi, file_id: str, dest: Path) -> int:
    """`WorkerApi.download_file` into a plain file (the fetcher itself writes through a workspace)."""
    with dest.open("w+b") as fh:
        return api.files.download_file(file_id, fh)


def upload_from(api: WorkerApi, job_id: str, path: Path, kind: UploadType, base_path: str) -> int:
    """`WorkerApi.upload_file` of a plain file, under its own name."""
    with path.open("rb") as fh:
        return api.files.upload_file(job_id, fh, path.name, kind, base_path)


def body_of(call: responses.Call) -> str:
    """The body a recorded request sent, as text."""
    body = call.request.body
    return body.decode() if isinstance(body, bytes) else str(body)


def query(call: responses.Call) -> dict[str, list[str]]:
    """The query parameters of a recorded request."""
    return parse_qs(urlsplit(str(call.request.url)).query)


def authorizations(call: responses.Call) -> list[str]:
    """Every Authorization header of a recorded request, whatever its case."""
    return [v for k, v in call.request.headers.items() if k.lower() == "authorization"]


# --- a raw HTTP server on 127.0.0.1, for answers `responses` cannot give (a trickle) -----------
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
