"""One test's world: the mock API on real HTTP, the fetcher's settings against it, job submission,
and what to wait for and read back (a job's statuses)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.models import (
    AppSpecs,
    ClaimOffer,
    HandlerSpecs,
    HardwareSpecs,
    JobSpecs,
    MetaSpecs,
    PathsUploadSpecs,
    SubmittedJob,
)
from fetcher.settings import Settings
from mock_api.server import MockServer
from mock_api.state import MockJob, MockState, Token

TOKEN = "worker-token-abcdef123456"
WORKER_HEADERS = {"Authorization": f"Bearer {TOKEN}"}  # the worker's, for requests made by hand
API_KEY = "test-api-key"
IMAGE = os.environ.get("FETCHER_TEST_IMAGE", "fetcher-test/busybox:1")
REGISTRY_IMAGE = os.environ.get("FETCHER_TEST_REGISTRY_IMAGE", "127.0.0.1:5000/test/job:1")
# Every fetcher id a test uses starts with this session's prefix, so that the leftover check (and its
# clean-up) only ever touches this session's containers, never those of another test run on the engine.
SESSION = "t" + uuid.uuid4().hex[:6]


def fetcher_id(name: str = "") -> str:
    """A fetcher id of this test session (FETCHER_ID), optionally with a readable name."""
    return f"{SESSION}-{name or uuid.uuid4().hex[:8]}"


@dataclass
class Env:
    """One test's world: a mock API on real HTTP, its data root, and the fetcher's base path."""

    mock: MockServer
    root: Path
    base: Path

    @property
    def state(self) -> MockState:
        return self.mock.state

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "api_url": self.mock.url,
            "access_token": TOKEN,
            "path_base": self.base,
            "poll_interval_s": 0.2,
            "keepalive_interval_s": 1.0,
            "stop_grace_s": 1.0,
            "api_retry_s": 3.0,
            "fetcher_id": fetcher_id(),
            "shm_size": "64m",
            "job_default_memory_mb": 64,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    def client(self, token: str = TOKEN, retry_s: float = 3.0) -> WorkerApi:
        """The fetcher's own client of this mock API, with a fixed token (the worker's by
        default)."""
        return WorkerApi(self.mock.url, FixedToken(token), Http(retry_s=retry_s, max_backoff_s=0.2))

    def add_worker(self, name: str) -> str:
        """Another worker account (of the `workers` group); returns its fixed token."""
        token = f"{name}-token-0123456789"
        with self.state.lock:
            self.state.tokens[token] = Token(name, ["workers"], None)
        return token

    def input_file(self, relative: str, content: bytes) -> str:
        path = Path(self.state.data_root, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return str(path)

    def submit(
        self,
        cmd: list[str] | None,
        *,
        image: str = IMAGE,
        files_down: dict[str, str] | None = None,
        files_up: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        hardware: HardwareSpecs | None = None,
        priority: int = 0,
        group: str | None = None,
    ) -> MockJob:
        spec = JobSpecs(
            app=AppSpecs(cmd=cmd, env=env),
            handler=HandlerSpecs(
                image_url=image,
                files_down=files_down,
                files_up=files_up if files_up is not None else {"output": "output", "log": "log"},
            ),
            meta=MetaSpecs(job_id=4242, job_name="test"),
            hardware=hardware or HardwareSpecs(cpu_cores=1, memory=64),
        )
        return self.state.submit(
            SubmittedJob(
                job=spec,
                group=group,
                priority=priority,
                paths_upload=PathsUploadSpecs(**self.paths_upload()),
            )
        )

    def paths_upload(self, s3: bool = False) -> dict[str, str]:
        """Upload directories of user1: in the store (the API's own upload route), or in the fake S3
        (pre-signed POSTs)."""
        out = "s3://bucket/user1/out" if s3 else f"{self.state.data_root}/user1/out"
        return {"output": f"{out}/output", "log": f"{out}/log", "artifact": f"{out}/artifact"}

    def submit_raw(
        self,
        job: Any,
        *,
        group: str | None = None,
        priority: int = 0,
        paths_upload: dict[str, str] | None = None,
    ) -> MockJob:
        """Submit `job` exactly as given (any JSON, also one the fetcher must refuse)."""
        return self.state.submit_raw(
            {
                "job": job,
                "group": group,
                "priority": priority,
                "paths_upload": paths_upload or self.paths_upload(),
            }
        )


def decode_job(**handler: Any) -> dict[str, Any]:
    """A job spec shaped as the user-facing API submits DECODE training (protocol notes' example):
    extra handler fields, `meta` with a date and extra keys. `handler` overrides handler fields."""
    return {
        "app": {
            "cmd": [
                "/docker/entrypoint.sh",
                "--train",
                "--param_path=$(find /files/config -name '*.yaml' | head -n 1)",
            ],
            "env": {"DECODE_SEED": "42"},
        },
        "handler": {
            "image_url": "registry.example/decode:v0_10_1",
            "image_name": "decode",
            "image_version": "v0_10_1",
            "entrypoint": "train",
            "files_down": {
                "config/param.yaml": "data/user1/config/param.yaml",
                "data/sub/calib.bin": "s3://bucket/user1/data/calib.bin",
            },
            "files_up": {"log": "log", "artifact": "model", "output": "output"},
            **handler,
        },
        "meta": {
            "job_id": 4242,
            "date_created": "2026-11-21T13:48:20.661126+00:00",
            "job_name": "x",
        },
        "hardware": {
            "cpu_cores": 2,
            "memory": 2000,
            "gpu_model": None,
            "gpu_archi": None,
            "gpu_mem": None,
        },
    }


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """`predicate()`'s first true value, asked every 50 ms; an AssertionError naming `what` if
    none comes within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def sequence(job: MockJob) -> list[str]:
    """The job's statuses without repeats in a row (keep-alive pings repeat the current one)."""
    out: list[str] = []
    for status in statuses(job):
        if not out or out[-1] != status:
            out.append(status)
    return out


def statuses(job: MockJob) -> list[str]:
    """Every status the server recorded for the job, in order (keep-alive repeats included)."""
    return [h["status"] for h in job.history]


def claim_offer(**kw: Any) -> ClaimOffer:
    """What a worker with 4000 MB and 4 cores offers, with `kw` on top."""
    values: dict[str, Any] = {"memory": 4000, "cpu_cores": 4}
    values.update(kw)
    return ClaimOffer(**values)


FINAL = ("finished", "error")


def last_details(job: MockJob) -> str:
    """The runtime details of the job's last recorded status ("" for none)."""
    return str(job.history[-1]["runtime_details"] or "")


def finals(job: MockJob) -> list[str]:
    """The final statuses (`finished`, `error`) the server recorded for the job, in order."""
    return [h["status"] for h in job.history if h["status"] in FINAL]
