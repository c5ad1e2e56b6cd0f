"""Per-job time of the fetcher against docker-py's own run + wait + remove, on no-op jobs.

    poetry run python -m scripts.bench_lifecycle [--jobs 20] [--image fetcher-test/busybox:1]

Both run the same image and command (`true`) on the same engine, one job at a time. The fetcher
runs its whole lifecycle against the mock API in this process (claim, status PUTs, workspace,
container with its limits and log follower, upload listing, final status delivered once,
cleanup); its per-job time is a whole cycle, from one job's claim to the next one's (one slot, so the
claim waits for the previous job's final status and clean-up). docker-py's is `containers.run(detach=True)`, `wait()`, `remove()`. Prints both and the
overhead; exits 1 if the overhead is above --budget-s (default 0.1 s).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import docker

from fetcher.daemon import build_daemon
from fetcher.models import (
    AppSpecs,
    HandlerSpecs,
    HardwareSpecs,
    JobSpecs,
    PathsUploadSpecs,
    SubmittedJob,
)
from fetcher.settings import Settings
from mock_api.server import MockServer
from mock_api.state import MockState


def docker_py(client: docker.DockerClient, image: str, jobs: int) -> list[float]:
    times = []
    for _ in range(jobs):
        started = time.monotonic()
        container = client.containers.run(image, ["/bin/sh", "-c", "true"], detach=True)
        container.wait()
        container.remove()
        times.append(time.monotonic() - started)
    return times


def fetcher(client: docker.DockerClient, image: str, jobs: int, root: Path) -> float:
    token = secrets.token_urlsafe(16)
    state = MockState(str(root / "store"), secrets.token_urlsafe(8), [token])
    base = root / "base"
    base.mkdir(mode=0o700)
    out = root / "store" / "results"
    spec = JobSpecs(
        app=AppSpecs(cmd=["true"]),
        handler=HandlerSpecs(image_url=image, files_up={"output": "output", "log": "log"}),
        hardware=HardwareSpecs(cpu_cores=1, memory=64),
    )
    submitted = [
        state.submit(
            SubmittedJob(
                job=spec,
                paths_upload=PathsUploadSpecs(
                    output=str(out / "o"), log=str(out / "l"), artifact=str(out / "a")
                ),
            )
        )
        for _ in range(jobs)
    ]
    with MockServer(state) as server:
        settings = Settings(
            _env_file=None,
            api_url=server.url,
            access_token=token,
            path_base=base,
            poll_interval_s=0.05,
            keepalive_interval_s=60,
            image_pull_policy="never",
            shm_size="64m",
            fetcher_id="bench-" + secrets.token_hex(3),
            exit_idle_polls=1,
            max_parallel_jobs=1,
        )
        build_daemon(settings, exit_when_idle=True, docker_client=client).run()
    assert all(j.status.value == "finished" for j in submitted), "a job did not finish"
    # one job's whole cycle, cleanup included: from one claim to the next (one slot)
    claims = sorted(float(j.history[1]["time"]) for j in submitted)  # `pulled`: claimed
    return (claims[-1] - claims[0]) / (jobs - 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--image", default="fetcher-test/busybox:1")
    p.add_argument("--budget-s", type=float, default=0.1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    client = docker.from_env()
    client.images.get(args.image)
    docker_py(client, args.image, 2)  # warm the engine up
    root = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    try:
        plain = docker_py(client, args.image, args.jobs)
        ours = fetcher(client, args.image, args.jobs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.mean(plain)
    print(f"{args.jobs} no-op jobs ({args.image}), one at a time:")
    print(
        f"  docker-py run + wait + remove: {base:.3f} s per job (median {statistics.median(plain):.3f} s)"
    )
    print(f"  fetcher, claim to next claim:  {ours:.3f} s per job")
    print(f"  overhead: {ours - base:+.3f} s per job (budget {args.budget_s:.3f} s)")
    return 0 if ours - base <= args.budget_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
