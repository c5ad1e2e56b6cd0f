"""Where a file request may send the daemon, and which origin a URL names: `origin` for every
spelling, never the API's when urllib3 would connect elsewhere, and the peer of each new connection
checked (a name that resolves to this box only when connecting)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetcher.api.peers import origin
from fetcher.errors import FetcherError, TransferError
from tests.helpers import download_to, worker_api


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:80", ("http", "127.0.0.1", 80)),
        ("http://127.0.0.1/files/x", ("http", "127.0.0.1", 80)),
        ("HTTPS://API.EXAMPLE.ORG:443/", ("https", "api.example.org", 443)),
        ("https://api.example.org./a?b=c", ("https", "api.example.org", 443)),
        ("http://[::1]:80/", ("http", "::1", 80)),
        ("http://[0:0:0::1]:8001", ("http", "::1", 8001)),
        ("https://user:pw@Host:8001/x", ("https", "host", 8001)),
        (" http://h/ ", ("http", "h", 80)),
        ("http://h:notaport/", None),
        ("http://h:99999/", None),
        ("ftp://h/", None),
        ("/relative/path", None),
        ("http:///nohost", None),
    ],
)
def test_origin_normalises_every_spelling(url: str, expected: object) -> None:
    assert origin(url) == expected


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
    """`origin()` and the HTTP stack agree on which host a URL names: for `http://evil\\@api:port/`
    urlsplit sees user info `evil\\` and host `api` where urllib3 sees host `evil`, so a download
    URL spelled so would have carried the bearer token to `evil`. Such a URL is not performed at
    all. Real sockets on loopback (`responses` never opens a connection)."""
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
        api = worker_api(f"http://127.0.0.1:{api_port}", retry_s=0.5)
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
    """A URL with a backslash in its authority never has the API's origin, since urllib3 would
    connect to the host before the backslash."""
    assert origin(url) != origin("http://api.test:8001")


def test_a_name_that_resolves_to_this_box_only_when_connecting_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new connection of a file request has its peer checked, not only the name before the
    request (requests resolves it again to connect: DNS rebinding, public when checked and
    127.0.0.1 when used): a connection that reached this box is refused before a byte is sent."""
    import http.server
    import json
    import threading

    from fetcher.api import files as files_module
    from fetcher.api.http import new_session
    from fetcher.api.peers import checked_adapter

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path.endswith("/url"):
                body = json.dumps(
                    {"method": "get", "url": f"{base}/secret", "headers": {}, "data": {}}
                ).encode()
            else:
                body = b"loopback-only secret"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = worker_api(base, token="t", retry_s=0.5)
        # as if the API were elsewhere, and the file URL's name had looked public when checked
        api.files._local_api = False
        api.files._file_session = new_session(checked_adapter())
        monkeypatch.setattr(files_module, "is_local_host", lambda *_: False)
        with pytest.raises(TransferError, match=r"connected to 127\.0\.0\.1, this box"):
            download_to(api, "data/x.bin", tmp_path / "x")
    finally:
        server.shutdown()
        server.server_close()
    assert hits and all(h.endswith("/url") for h in hits), hits  # the secret was never asked for
