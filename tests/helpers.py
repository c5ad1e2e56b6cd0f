"""Shared test helpers: the mock API, settings for a test, job submission, a GPU-less NVML fake."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher.api.client import WorkerApi
from fetcher.models import (
    AppSpecs,
    HandlerSpecs,
    HardwareSpecs,
    JobSpecs,
    MetaSpecs,
    PathsUploadSpecs,
    SubmittedJob,
    UploadType,
)
from fetcher.settings import Settings
from mock_api.server import MockServer
from mock_api.state import MockJob, MockState, Token

TOKEN = "worker-token-abcdef123456"
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
    return [h["status"] for h in job.history]


class FakeNvml:
    """A table-driven stand-in for pynvml: `gpus` is a list of (uuid, name, memory_mb, arch int)."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, gpus: list[tuple[str, str, int, int]] | None = None, fail_init: bool = False
    ) -> None:
        self.gpus = gpus or []
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.gpus[h][0]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][1].encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return type("Mem", (), {"total": self.gpus[h][2] * 1024 * 1024})()

    def nvmlDeviceGetArchitecture(self, h: int) -> int:
        return self.gpus[h][3]


def four_gpus() -> FakeNvml:
    return FakeNvml(
        [
            (f"GPU-{i}0000000-aaaa-bbbb-cccc-{i:012d}", "NVIDIA A100-SXM4-40GB", 40960, 7)
            for i in range(4)
        ]
    )


def download_to(api: WorkerApi, file_id: str, dest: Path) -> int:
    """`WorkerApi.download_file` into a plain file (the fetcher itself writes through a workspace)."""
    with dest.open("w+b") as fh:
        return api.files.download_file(file_id, fh)


def upload_from(api: WorkerApi, job_id: str, path: Path, kind: UploadType, base_path: str) -> int:
    """`WorkerApi.upload_file` of a plain file, under its own name."""
    with path.open("rb") as fh:
        return api.files.upload_file(job_id, fh, path.name, kind, base_path)
