"""The mock API in a process of its own, for the benchmarks: as the real server, its work (its
multipart parsing above all) never competes with the fetcher for this process's interpreter lock."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from mock_api.server import free_port


@contextlib.contextmanager
def mock_api_process(data_root: Path, token: str, key: str) -> Iterator[str]:
    """`python -m mock_api` on a free port of 127.0.0.1, until the block ends; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mock_api",
            "--port",
            str(port),
            "--data-root",
            str(data_root),
            "--worker-token",
            token,
            "--api-key",
            key,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/access_info", timeout=1).ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the mock API did not start within 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
