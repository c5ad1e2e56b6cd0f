"""Run the mock API: in a background thread (tests, demo), or in the foreground (`mock-api`)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from mock_api.app import create_app
from mock_api.state import MockState


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MockServer:
    """The mock API on real HTTP, its keep-alive checker beside it; a context manager."""

    def __init__(self, state: MockState, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.state = state
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(
            create_app(state),
            host=host,
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_check = -float("inf")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _check_timeouts(self) -> None:
        while not self._stop.wait(min(self.state.config.check_interval_s, 1.0)):
            now = time.monotonic()
            if now - self._last_check >= self.state.config.check_interval_s:
                self._last_check = now
                self.state.check_timeouts()

    def start(self) -> MockServer:
        server_thread = threading.Thread(target=self.server.run, name="mock-api", daemon=True)
        checker = threading.Thread(
            target=self._check_timeouts, name="mock-api-timeouts", daemon=True
        )
        self._threads = [server_thread, checker]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not server_thread.is_alive():
                raise RuntimeError(f"mock API did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.should_exit = True
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self) -> None:
        checker = threading.Thread(
            target=self._check_timeouts, name="mock-api-timeouts", daemon=True
        )
        checker.start()
        try:
            self.server.run()
        finally:
            self._stop.set()
