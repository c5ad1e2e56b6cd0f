"""The mock-api command: it starts, serves the worker routes and logs a user in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from fetcher.api.auth import CognitoLogin, FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from mock_api.server import free_port
from tests.helpers import claim_offer, wait_for


def test_mock_api_command_starts_and_serves(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mock_api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-root",
        str(tmp_path / "d"),
        "--worker-token",
        "tok-123456",
        "--api-key",
        "k",
        "--user",
        "u:pw",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 20, "mock-api to answer")
        client = WorkerApi(url, FixedToken("tok-123456"), Http(retry_s=2))
        assert client.claim_jobs(claim_offer()).jobs == {}
        login = CognitoLogin(Http(), url, "u", "pw", endpoint=url + "/_cognito/")
        assert WorkerApi(url, login, Http()).claim_jobs(claim_offer()).jobs == {}
    finally:
        proc.terminate()
        proc.wait(10)


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/access_info", timeout=1).status_code == 200
    except requests.RequestException:
        return False
