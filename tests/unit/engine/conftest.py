"""A Docker API reached over TLS (DOCKER_HOST=tcp://...:2376 with DOCKER_TLS_VERIFY), for the
engine's checks that must reach it as the job's client does."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import docker
import docker.tls
import pytest


@pytest.fixture
def tls_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Docker-API stand-in served over TLS (as DOCKER_HOST=tcp://...:2376 with
    DOCKER_TLS_VERIFY), and a docker-py client configured for it, as docker.from_env builds one."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # requests lets these beat session.verify
        monkeypatch.delenv(name, raising=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class Ping(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Api-Version", "1.41")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = docker.DockerClient(
        base_url=f"https://127.0.0.1:{server.server_address[1]}",
        tls=docker.tls.TLSConfig(ca_cert=str(cert), verify=True),
        version="1.41",
    )
    try:
        yield client
    finally:
        server.shutdown()
        client.close()
