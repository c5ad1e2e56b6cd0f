"""Benchmark: what a job that leaves many empty output files costs the fetcher (walk, hand-out to the
transfer threads with a no-op upload, removal), with and without JOB_OUTPUT_MAX_FILES.

Prints time and this process's resident memory for each stage. Everything happens in a temporary
directory that is removed at the end.

    poetry run python -m scripts.bench_outputs [--files 1000000] [--limit 100000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from fetcher.job.transfer import run_parallel
from fetcher.job.workspace import OutputLimit, Workspace, plan_layout
from fetcher.models import JobSpecs


def rss_mib() -> float:
    with Path("/proc/self/status").open() as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--limit", type=int, default=100_000)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    try:
        spec = JobSpecs.model_validate({"handler": {"image_url": "x", "files_up": {"output": "o"}}})
        layout = plan_layout("1", spec)
        ws = Workspace("1", tmp, tmp)
        ws.create(layout)
        started = time.monotonic()
        out = str(tmp / "1" / "o")
        for i in range(args.files):
            os.close(os.open(f"{out}/f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
        print(f"made {args.files} empty files in {time.monotonic() - started:.1f} s")

        base = rss_mib()
        started = time.monotonic()
        try:
            ws.output_files(layout, max_files=args.limit)
            print(f"limit {args.limit}: not reached")
        except OutputLimit:
            print(
                f"limit {args.limit}: stopped after {time.monotonic() - started:.2f} s,"
                f" RSS +{rss_mib() - base:.0f} MiB"
            )

        started = time.monotonic()
        files = ws.output_files(layout)
        walked = time.monotonic() - started
        after_walk = rss_mib()
        started = time.monotonic()
        run_parallel(files, lambda f: 0, 4, threading.Event())
        handed = time.monotonic() - started
        print(
            f"no limit: walk {walked:.1f} s (RSS +{after_walk - base:.0f} MiB), hand-out of"
            f" {len(files)} no-op uploads {handed:.1f} s (RSS +{rss_mib() - after_walk:.0f} MiB),"
            f" peak {peak_mib():.0f} MiB"
        )
        del files
        started = time.monotonic()
        removed = ws.remove()
        print(f"removal: {time.monotonic() - started:.1f} s ({'done' if removed else 'FAILED'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
