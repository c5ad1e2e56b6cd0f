"""A small hostile worker-facing API: it answers with whatever a test scripts.

Only what the fetcher needs to get that far: `/access_info`, `GET /jobs` (the next scripted answer,
then `{}`), status PUTs (recorded, 204); any route a test adds (a download URL that trickles, a
redirect, a busy status) comes first. Beside it: a job spec as such a server sends it, and the
fetcher's settings against it.

Every path a hostile test names lives in its own tmp_path; every URL points at a server of the
test's own on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fetcher.settings import Settings
from tests.helpers.env import IMAGE, TOKEN, fetcher_id

Route = Callable[[BaseHTTPRequestHandler], None]


class HostileServer:
    """A worker-facing API whose answers a test scripts: claims (bytes, one per `GET /jobs`, then
    `{}`) and routes per (method, path prefix). Unscripted: `/access_info` answers, status PUTs are
    recorded (204), anything else is 404 (`GET /jobs/{id}/status` too: it knows no job). Every
    request is recorded."""

    def __init__(self, claims: list[bytes], routes: dict[tuple[str, str], Route] | None = None):
        self.claims = list(claims)
        self.routes = routes or {}
        self.puts: list[tuple[str, dict[str, list[str]]]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.claims_served = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return

            def answer(
                self, code: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                for k, v in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def _any(self) -> None:
                parts = urlsplit(self.path)
                with outer.lock:
                    outer.requests.append((self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                for (method, prefix), fn in outer.routes.items():
                    if method == self.command and parts.path.startswith(prefix):
                        fn(self)
                        return
                if self.command == "GET" and parts.path == "/access_info":
                    info = {"cognito": {"user_pool_id": "p", "client_id": "c", "region": "r"}}
                    self.answer(200, json.dumps(info).encode())
                elif self.command == "GET" and parts.path == "/jobs":
                    with outer.lock:
                        body = outer.claims.pop(0) if outer.claims else b"{}"
                        outer.claims_served += 1
                    self.answer(200, body)
                elif self.command == "PUT" and parts.path.endswith("/status"):
                    with outer.lock:
                        outer.puts.append((parts.path, parse_qs(parts.query)))
                    self.answer(204)
                else:
                    self.answer(404, b'{"detail":"Not Found"}')

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def statuses_of(self, job_id: str) -> list[str]:
        return [status for status, _details in self.reports_of(job_id)]

    def reports_of(self, job_id: str) -> list[tuple[str, str]]:
        """(status, runtime_details) of each status PUT for `job_id`, in order."""
        with self.lock:
            return [
                (q["status"][0], q.get("runtime_details", [""])[0])
                for p, q in self.puts
                if p == f"/jobs/{job_id}/status"
            ]


def hostile_job(
    cmd: str = "true", *, meta: dict[str, Any] | None = None, **handler: Any
) -> dict[str, Any]:
    """A small valid job spec as a server sends it (the test image, 64 MB, one core); `handler`
    fields on top, `meta` in place of `{"job_id": 1}`."""
    return {
        "app": {"cmd": [cmd], "env": None},
        "handler": {"image_url": IMAGE, "files_down": None, "files_up": None, **handler},
        "meta": meta if meta is not None else {"job_id": 1},
        "hardware": {"cpu_cores": 1, "memory": 64},
    }


def hostile_settings(url: str, base: Path, **kw: Any) -> Settings:
    """The fetcher's settings against the server at `url`, with PATH_BASE `base`."""
    values: dict[str, Any] = {
        "api_url": url,
        "access_token": TOKEN,
        "path_base": base,
        "poll_interval_s": 0.05,
        "keepalive_interval_s": 1.0,
        "api_retry_s": 2.0,
        "fetcher_id": fetcher_id(),
        "shm_size": "64m",
        "job_default_memory_mb": 64,
        "stop_grace_s": 1.0,
    }
    values.update(kw)
    return Settings(_env_file=None, **values)


def deep_base(tmp_path: Path) -> Path:
    """A PATH_BASE three directories below `tmp_path`."""
    base = tmp_path / "deep" / "er" / "base"
    base.mkdir(parents=True)
    return base


# A job command that leaves 3000 nested directories under /files/output (built from the bottom: a
# shell's `cd` would hit PATH_MAX first), and a file at the top.
DEEP_TREE = (
    "mkdir -p /files/output && cd /files/output && echo bottom > f && mkdir d && mv f d/ && i=0; "
    "while [ $i -lt 3000 ]; do mkdir n && mv d n/ && mv n d || exit 9; i=$((i+1)); done; "
    "echo shallow > /files/output/top.txt"
)
