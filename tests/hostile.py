"""A small hostile worker-facing API: it answers claims with whatever bytes a test scripts.

Only what the fetcher needs to get that far: `/access_info`, `GET /jobs` (the next scripted answer,
then `{}`), status PUTs (recorded, 204) and `GET /jobs/{id}/status` (404: it knows no job).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class HostileServer:
    def __init__(self, claims: list[bytes]) -> None:
        self.claims = list(claims)
        self.puts: list[tuple[str, dict[str, list[str]]]] = []
        self.claims_served = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:  # quiet
                return

            def _answer(
                self, code: int, body: bytes = b"", ctype: str = "application/json"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/access_info":
                    info = {"cognito": {"user_pool_id": "p", "client_id": "c", "region": "r"}}
                    self._answer(200, json.dumps(info).encode())
                elif path == "/jobs":
                    with outer._lock:
                        body = outer.claims.pop(0) if outer.claims else b"{}"
                        outer.claims_served += 1
                    self._answer(200, body)
                else:
                    self._answer(404, b'{"detail":"Not Found"}')

            def do_PUT(self) -> None:
                parts = urlsplit(self.path)
                with outer._lock:
                    outer.puts.append((parts.path, parse_qs(parts.query)))
                self._answer(204)

            def do_POST(self) -> None:
                self._answer(404, b'{"detail":"Not Found"}')

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
        with self._lock:
            return [q["status"][0] for p, q in self.puts if p == f"/jobs/{job_id}/status"]
