"""How long the GPU waits between jobs: the gap from one job container's exit to the next one's
start, and the share of the time the slot stands idle while jobs wait, side by side in one run for

- the fetcher as it is by default (the GPU is given to the next job when the container exits; the
  finished job uploads beside it; the next job's inputs are downloaded after it is claimed),
- the fetcher with STAGE_AHEAD=1 (the next job is claimed, downloaded and its image checked while
  the current one runs),
- the engine's floor: create + start of a container, with nothing else to do.

    poetry run python -m scripts.bench_gap [--jobs 5] [--input-mb 300] [--output-mb 300]
        [--sleep-s 10] [--storage-mbs 50] [--image fetcher-test/busybox:1]

One slot, N jobs queued at once in the project's mock API on loopback (its downloads throttled to
--storage-mbs MB/s: a lab's cloud bucket; 0 = as fast as loopback goes), each job downloading one
input, sleeping, then writing one output; the real fetcher in this process against the real
engine. Gaps come from the engine's own events (`die` of one job container, `start` of the next).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import requests

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from fetcher.models import (
    AppSpecs,
    HandlerSpecs,
    HardwareSpecs,
    JobSpecs,
    PathsUploadSpecs,
    SubmittedJob,
)
from fetcher.settings import Settings
from scripts.mock_process import mock_api_process

MB = 1_000_000


class Events:
    """The `start` and `die` events of one fetcher's containers, with the engine's times."""

    def __init__(self, client: Any, fid: str) -> None:
        self.seen: list[tuple[float, str, str]] = []  # (time, action, container id)
        self._stream = client.events(
            decode=True, filters={"label": f"{LABEL_ID}={fid}", "event": ["start", "die"]}
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for e in self._stream:
                self.seen.append((int(e["timeNano"]) / 1e9, e["Action"], e["id"]))
        except Exception:  # noqa: BLE001 - the stream is closed at the end
            return

    def close(self) -> None:
        time.sleep(0.5)
        self._stream.close()

    def gaps(self) -> tuple[list[float], float]:
        """The gap before each job after the first, and the idle share from first start to last
        exit."""
        seen = sorted(self.seen)
        starts = [t for t, a, _ in seen if a == "start"]
        dies = [t for t, a, _ in seen if a == "die"]
        gaps = [nxt - end for end, nxt in zip(dies, starts[1:], strict=False)]
        span = max(dies) - min(starts) if starts and dies else 0.0
        return gaps, (sum(gaps) / span if span else 0.0)


def run_fetcher(args: argparse.Namespace, stage_ahead: bool) -> tuple[list[float], float, float]:
    """The gaps, the idle share, and the mean time of a job's download (as the fetcher timed it:
    beside the previous job's upload, on this box's cores)."""
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-gap-") as tmp:
        root = Path(tmp)
        token, key = secrets.token_urlsafe(16), secrets.token_urlsafe(8)
        data = root / "store" / "in.bin"
        data.parent.mkdir(parents=True, exist_ok=True)
        with data.open("wb") as fh:
            fh.truncate(args.input_mb * MB)  # sparse: the disk does not slow the download down
        base = root / "base"
        base.mkdir(mode=0o700)
        fid = f"bench-gap-{secrets.token_hex(3)}"
        with mock_api_process(root / "store", token, key) as url:
            admin = {"x-api-key": key}
            faults = {"download_bytes_per_s": int(args.storage_mbs * MB)}
            requests.post(
                f"{url}/_faults", json=faults, headers=admin, timeout=10
            ).raise_for_status()
            for _ in range(args.jobs):
                body = job(args, str(data), root).model_dump(mode="json")
                requests.post(
                    f"{url}/_jobs", json=body, headers=admin, timeout=10
                ).raise_for_status()
            settings = Settings(
                _env_file=None,
                api_url=url,
                access_token=token,
                path_base=base,
                fetcher_id=fid,
                max_parallel_jobs=1,
                poll_interval_s=1,
                keepalive_interval_s=5,
                stage_ahead=stage_ahead,
                image_pull_policy="never",
                shm_size="64m",
                min_free_disk_mb=0,
                stage_ahead_disk_mb=0,
            )
            events = Events(client, fid)
            daemon = build_daemon(settings, exit_when_idle=True, docker_client=client)
            daemon.run()
            events.close()
    registry = daemon.deps.metrics.registry
    took = registry.get_sample_value("fetcher_stage_seconds_sum", {"stage": "download"}) or 0.0
    count = registry.get_sample_value("fetcher_stage_seconds_count", {"stage": "download"}) or 1.0
    return (*events.gaps(), took / count)


def job(args: argparse.Namespace, file_id: str, root: Path) -> SubmittedJob:
    out = root / "store" / "results"
    cmd = f"sleep {args.sleep_s} && head -c {args.output_mb * MB} /dev/zero > /files/output/out.bin"
    return SubmittedJob(
        job=JobSpecs(
            app=AppSpecs(cmd=[cmd]),
            handler=HandlerSpecs(
                image_url=args.image,
                files_down={"in.bin": file_id},
                files_up={"output": "output"},
            ),
            hardware=HardwareSpecs(cpu_cores=1, memory=256),
        ),
        paths_upload=PathsUploadSpecs(
            output=str(out / "output"), log=str(out / "log"), artifact=str(out / "artifact")
        ),
    )


def engine_floor(image: str, n: int) -> list[float]:
    """create + start of a no-op container, each: what the engine itself needs between jobs."""
    client = docker.from_env()
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        c = client.containers.create(image, ["true"], init=True, labels={LABEL_ID: "bench-floor"})
        c.start()
        times.append(time.monotonic() - t0)
        c.wait()
        c.remove(force=True)
    return times


def row(name: str, gaps: list[float], idle: float | None, bound: str = "") -> str:
    if not gaps:
        return f"{name:<34} {'-':>10} {'-':>10} {'-':>8}  {bound}"
    med, worst = statistics.median(gaps), max(gaps)
    share = "-" if idle is None else f"{100 * idle:.0f} %"
    return f"{name:<34} {med:>9.2f}s {worst:>9.2f}s {share:>8}  {bound}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=5)
    p.add_argument("--input-mb", type=int, default=300)
    p.add_argument("--output-mb", type=int, default=300)
    p.add_argument("--sleep-s", type=float, default=10)
    p.add_argument("--storage-mbs", type=float, default=50, help="download rate; 0: unthrottled")
    p.add_argument(
        "--image", default=os.environ.get("FETCHER_TEST_IMAGE", "fetcher-test/busybox:1")
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    nominal_s = args.input_mb / args.storage_mbs if args.storage_mbs else 0.0
    print(
        f"{args.jobs} jobs, one slot: {args.input_mb} MB in at"
        f" {args.storage_mbs or 'unthrottled'} MB/s ({nominal_s:.1f} s), sleep {args.sleep_s} s,"
        f" {args.output_mb} MB out"
    )
    print(f"{'':<34} {'median gap':>10} {'worst gap':>10} {'idle':>8}  target")
    default_gaps, default_idle, download_s = run_fetcher(args, stage_ahead=False)
    bound = download_s + 0.6
    print(
        row(
            "fetcher, default",
            default_gaps,
            default_idle,
            f"<= {bound:.2f} s (its download, {download_s:.2f} s, + 0.6 s)",
        )
    )
    ahead_gaps, ahead_idle, _ = run_fetcher(args, stage_ahead=True)
    print(row("fetcher, STAGE_AHEAD=1", ahead_gaps, ahead_idle, "<= 0.60 s"))
    print(row("engine floor (create + start)", engine_floor(args.image, args.jobs), None))
    ok = (
        default_gaps
        and statistics.median(default_gaps) <= bound
        and ahead_gaps
        and statistics.median(ahead_gaps) <= 0.6
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
