"""Benchmark: a large file down and up through the real client, against mock_api in another process.

Prints the client's peak memory (this process's max RSS) and the rates. Exits 1 if the peak grew by
more than the budget over the baseline taken before the transfers.

    poetry run python -m scripts.bench_transfer [--size-mib 2048] [--budget-mib 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.models import ClaimOffer, UploadType
from mock_api.server import free_port

TOKEN = "bench-token-123456"  # noqa: S105 - the mock's token, made up here
KEY = "bench-key"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=2048)
    p.add_argument("--budget-mib", type=float, default=100.0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fetcher-bench-"))
    data = work / "data"
    src = data / "user1/in/big.bin"
    src.parent.mkdir(parents=True)
    block = os.urandom(1024 * 1024)
    with src.open("wb") as fh:
        for _ in range(args.size_mib):
            fh.write(block)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mock_api",
            "--port",
            str(port),
            "--data-root",
            str(data),
            "--worker-token",
            TOKEN,
            "--api-key",
            KEY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{url}/access_info", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        job = {
            "job": {"handler": {"image_url": "x"}},
            "paths_upload": {"output": str(data / "out/output"), "log": str(data / "out/log")},
        }
        requests.post(
            f"{url}/_jobs", json=job, headers={"x-api-key": KEY}, timeout=10
        ).raise_for_status()
        api = WorkerApi(url, FixedToken(TOKEN), Http(read_timeout_s=600))
        job_id = next(iter(api.claim_jobs(ClaimOffer(memory=1000, cpu_cores=1)).jobs))
        baseline = peak_rss_mib()
        size = src.stat().st_size

        t0 = time.monotonic()
        with (work / "down.bin").open("w+b") as fh:
            api.files.download_file(str(src), fh)
        t_down = time.monotonic() - t0
        after_down = peak_rss_mib()

        t0 = time.monotonic()
        with (work / "down.bin").open("rb") as fh:
            api.files.upload_file(job_id, fh, "down.bin", UploadType.output, "bench")
        t_up = time.monotonic() - t0
        peak = peak_rss_mib()
        landed = data / "out/output/bench/down.bin"
        assert landed.stat().st_size == size, "upload incomplete"
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # nothing left in the temporary directory
    mib = size / 1024 / 1024
    print(f"file: {mib:.0f} MiB")
    print(f"download: {t_down:.1f} s ({mib / t_down:.0f} MiB/s), peak RSS {after_down:.1f} MiB")
    print(f"upload:   {t_up:.1f} s ({mib / t_up:.0f} MiB/s), peak RSS {peak:.1f} MiB")
    print(
        f"client peak RSS {peak:.1f} MiB (budget {args.budget_mib:.0f} MiB); before the transfers "
        f"{baseline:.1f} MiB, so the transfers added {peak - baseline:.1f} MiB"
    )
    return 0 if peak < args.budget_mib else 1


if __name__ == "__main__":
    raise SystemExit(main())
