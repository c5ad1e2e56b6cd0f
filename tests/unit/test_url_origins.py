"""Review finding: `origin()` and the HTTP stack must agree on which host a URL names.

`origin()` parses with `urllib.parse.urlsplit`, requests/urllib3 connect where
`urllib3.util.parse_url` says. They disagree on a backslash in the authority: for
`http://evil\\@api:port/` urlsplit sees user info `evil\\` and host `api`, urllib3 sees host
`evil`. A hostile server that hands out such a download URL would receive the bearer token.
Real sockets on loopback (not `responses`, which never opens a connection).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.api.peers import origin
from fetcher.errors import FetcherError

TOKEN = "review-token-0123456789"


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]]
    answer: dict[str, object] | None = None

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps(self.answer).encode() if self.answer is not None else b"data"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def serve(
    answer: dict[str, object] | None,
) -> tuple[http.server.HTTPServer, list[tuple[str, str | None]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("H", (Recorder,), {"seen": seen, "answer": answer})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def other() -> Iterator[tuple[int, list[tuple[str, str | None]]]]:
    server, seen = serve(None)
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def test_a_backslash_url_never_carries_the_token_to_another_host(
    other: tuple[int, list[tuple[str, str | None]]], tmp_path: Path
) -> None:
    other_port, other_seen = other
    # Given an API on 127.0.0.1 whose download URL names `localhost:<other>` before a backslash
    # (urlsplit reads that as user info, urllib3 as the host)
    api_server, _ = serve({})
    api_port = api_server.server_address[1]
    url = f"http://localhost:{other_port}\\@127.0.0.1:{api_port}/files/f/download"
    api_server.RequestHandlerClass.answer = {  # type: ignore[attr-defined]
        "method": "get",
        "url": url,
        "headers": {},
        "data": {},
    }
    try:
        api = WorkerApi(
            f"http://127.0.0.1:{api_port}", FixedToken(TOKEN), Http(retry_s=0.5, max_backoff_s=0.05)
        )
        # When the file is downloaded (whether that works is beside the point)
        with (tmp_path / "f").open("w+b") as fh, contextlib.suppress(FetcherError):
            api.files.download_file("f", fh, retry_s=0.5)
    finally:
        api_server.shutdown()
        api_server.server_close()
    # Then the other host never saw our token (a URL the two parsers read differently is not
    # performed at all since file URLs are checked before use)
    assert all(auth is None for _path, auth in other_seen), other_seen


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example\\@api.test:8001/x",
        "http://evil.example:80\\@api.test:8001/x",
    ],
)
def test_origin_is_not_the_apis_when_urllib3_would_connect_elsewhere(url: str) -> None:
    assert origin(url) != origin("http://api.test:8001")
