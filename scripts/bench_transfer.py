"""Benchmark: uploads (and downloads, for reference) of large files, ours against curl's, in one run.

For each size, each transfer runs in a child process of its own, `--reps` times, the clients taking
turns (curl, ours before, ours now; then ours before, ours now, curl; ...), and the medians are printed side by side with the ratios
against curl:

  upload   curl             curl -F file=@... (the API's data fields first, with --form-string)
  upload   ours before      the upload as it was: requests_toolbelt's MultipartEncoder
  upload   ours now         WorkerApi.upload_file (fetcher/api/multipart.py)
  download curl / ours      curl -o, WorkerApi.download_file

Columns: MiB/s (the file's size over the transfer's time, the API's answer with the file's request
included for curl too), client CPU seconds (user + system; curl:
its whole process, from wait4; ours: the transfer itself, getrusage in the child around it, so not
the interpreter's start), server CPU seconds (the server's processes, every one that holds the
listening socket, found through /proc: their user + system time from before the transfer to when
they have gone idle after it),
client peak RSS (the child's VmHWM: the whole process, our imports included). The source file is
written first (so it is in the page cache for every client); what lands is checked and deleted
after each transfer, then the disk synced, outside the timing. On a small shared box the figures of single runs vary by 10-20%: the
medians of several (5 by default) interleaved runs are what to compare. The ratios are the medians
of each run's ratio to curl's run of the same round, which cancels most of the drift.

Against our mock (default; started here), or a server already running on this box, such as the
real WorkerAPI run on loopback with its local file store and a SQLite queue, and a worker token it
accepts (its own integration tests override the Cognito check the same way):

    poetry run python -m scripts.bench_transfer                      # the mock, 1 and 2 GiB
    poetry run python -m scripts.bench_transfer --api-url http://127.0.0.1:8001 \\
        --data-root /tmp/wapi-data --token TOKEN --api-key INTERNAL_API_KEY_SECRET

`--data-root` is the server's file store (its USER_DATA_ROOT_PATH: the benchmark writes its files
there, in a directory of its own that it deletes). Exits 1 when our client's peak RSS passes
`--budget-mib` in a transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

TOKEN = "bench-token-123456"  # noqa: S105 - the mock's token, made up here
KEY = "bench-key"
UPLOADS = ("curl", "ours before", "ours now")
DOWNLOADS = ("curl", "ours")
BLOCK = 1024 * 1024


# --- the server's CPU time -------------------------------------------------------------------
def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


def server_pids(port: int) -> list[int]:
    """The processes that hold the socket listening on `port` (all of a pre-forking server)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in wanted for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return sorted(pids)


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of `pids` (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def settled_cpu_seconds(pids: list[int], limit_s: float = 5.0) -> float:
    """`cpu_seconds` once the server has been idle for 0.1 s: what a server does after its answer
    (closing files, say) is the transfer's, and must neither be missed for a client that exits at
    once nor counted for the next transfer."""
    deadline = time.monotonic() + limit_s
    last = cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pids)
        if now == last:
            break
        last = now
    return last


# --- the clients, each in a child process ----------------------------------------------------
@dataclass
class Sample:
    seconds: float
    client_cpu: float
    server_cpu: float
    peak_rss_mib: float


def vm_hwm_mib(pid: int | str) -> float:
    """The process's peak RSS so far (VmHWM), 0 once it is gone. Not ru_maxrss: a child's counts
    the memory of the process that forked it (here, the benchmark's own)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(
    cmd: list[str], server: list[int], since: float | None = None
) -> tuple[str, float, float, float]:
    """Run `cmd`: its stdout, the server's CPU seconds since `since` (or meanwhile), the child's
    CPU seconds (wait4) and its peak RSS in MiB (VmHWM, read every 20 ms while it runs)."""
    before = settled_cpu_seconds(server) if since is None else since
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak = 0.0
        while True:
            peak = max(peak, vm_hwm_mib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its rusage
        spent = settled_cpu_seconds(server) - before
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {errors[-2000:]}")
    return text, spent, usage.ru_utime + usage.ru_stime, peak


def curl_sample(args: list[str], server: list[int], since: float, asked_s: float) -> Sample:
    """curl's transfer; `since` (the server's CPU seconds) and `asked_s` (seconds) were taken
    before the API was asked for the file's request, which our client does in its transfer."""
    out, spent, cpu, peak = run_child(
        ["curl", "-sS", "-f", "-w", "%{time_total}", *args], server, since
    )
    return Sample(asked_s + float(out.strip().rsplit("\n", 1)[-1]), cpu, spent, peak)


def ours_sample(mode: str, opts: list[str], server: list[int]) -> Sample:
    out, spent, _, peak = run_child(
        [sys.executable, "-m", "scripts.bench_transfer", "--child", mode, *opts], server
    )
    child = json.loads(out.strip().splitlines()[-1])
    return Sample(child["seconds"], child["cpu"], spent, max(peak, child["peak_rss_mib"]))


def child_main(args: argparse.Namespace) -> int:
    """In the child: one transfer through our client; prints its time and CPU as JSON."""
    from fetcher.api.auth import FixedToken
    from fetcher.api.client import WorkerApi
    from fetcher.api.http import Http
    from fetcher.models import UploadType

    api = WorkerApi(args.api_url, FixedToken(args.token), Http(read_timeout_s=600, retry_s=0))
    path = Path(args.file)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    if args.child == "download":
        with path.open("w+b") as fh:
            api.files.download_file(args.file_id, fh)
    elif args.child == "upload":
        with path.open("rb") as fh:
            api.files.upload_file(args.job, fh, path.name, UploadType.output, "bench")
    else:
        with path.open("rb") as fh:
            upload_toolbelt(api, args.job, fh, path.name)
    seconds = time.monotonic() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss_mib": vm_hwm_mib("self")}))
    return 0


def upload_toolbelt(api: Any, job_id: str, fh: Any, name: str) -> None:
    """The upload as it was before fetcher/api/multipart.py: a MultipartEncoder (requests_toolbelt)
    over the file, which urllib3 reads 16 KiB at a time."""
    from requests_toolbelt import MultipartEncoder

    what = f"upload {name}"
    files = api.files
    path = f"/jobs/{quote(job_id, safe='')}/files/url"
    req = files._ask(what, "POST", path, params={"type": "output", "base_path": "bench"})
    fields: list[tuple[str, Any]] = [(k, str(v)) for k, v in req.data.items()]
    fields.append(("file", (name, fh, "application/octet-stream")))
    body = MultipartEncoder(fields=fields)
    headers = {**files._headers_for(req), "Content-Type": body.content_type}
    files._perform(req, what, headers=headers, data=body, expected=(200, 201, 204)).close()


# --- the run ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, url: str, work: Path, server: list[int]) -> None:
        self.args = args
        self.url = url
        self.work = work
        self.server = server
        self.auth = {"Authorization": f"Bearer {args.token}"}
        self.job = self._submit_and_claim()

    def _submit_and_claim(self) -> str:
        from fetcher.api.auth import FixedToken
        from fetcher.api.client import WorkerApi
        from fetcher.api.http import Http
        from fetcher.models import ClaimOffer

        marker = int.from_bytes(os.urandom(4), "big")
        out = self.work / "out"
        job = {
            "job": {
                "app": {"cmd": ["true"], "env": {}},
                "handler": {
                    "image_url": "bench/none:0",
                    "files_up": {"output": "output", "log": "log", "artifact": "artifact"},
                },
                "meta": {"job_id": marker, "date_created": "bench"},
                "hardware": {"cpu_cores": 1, "memory": 1},
            },
            "paths_upload": {k: str(out / k) for k in ("output", "log", "artifact")},
        }
        requests.post(
            f"{self.url}/_jobs", json=job, headers={"x-api-key": self.args.api_key}, timeout=30
        ).raise_for_status()
        self.api = WorkerApi(self.url, FixedToken(self.args.token), Http(retry_s=10))
        offer = ClaimOffer(memory=1_000_000, cpu_cores=1024, gpu_mem=0)
        for _ in range(20):  # other jobs queued before ours are left to time out
            claimed = self.api.claim_jobs(offer).jobs
            for queue_id, spec in claimed.items():
                if spec.meta.job_id == marker:
                    return queue_id
            if not claimed:
                break
        raise RuntimeError("the benchmark's job could not be claimed")

    def keep_alive(self) -> None:
        from fetcher.models import JobStatus

        self.api.put_status(self.job, JobStatus.running)

    def _upload_url(self) -> dict[str, Any]:
        resp = requests.post(
            f"{self.url}/jobs/{self.job}/files/url",
            params={"type": "output", "base_path": "bench"},
            headers=self.auth,
            timeout=30,
        )
        resp.raise_for_status()
        answer: dict[str, Any] = resp.json()
        return answer

    def _child_opts(self) -> list[str]:
        return ["--api-url", self.url, "--token", self.args.token, "--job", self.job]

    def upload(self, client: str, src: Path) -> Sample:
        if client == "curl":
            since, t0 = settled_cpu_seconds(self.server), time.monotonic()
            req = self._upload_url()
            asked_s = time.monotonic() - t0
            form = [
                a for k, v in req.get("data", {}).items() for a in ("--form-string", f"{k}={v}")
            ]
            headers = [a for k, v in req.get("headers", {}).items() for a in ("-H", f"{k}: {v}")]
            sample = curl_sample(
                ["-o", os.devnull, *headers, *form, "-F", f"file=@{src}", req["url"]],
                self.server,
                since,
                asked_s,
            )
        else:
            mode = "upload" if client == "ours now" else "upload-toolbelt"
            sample = ours_sample(mode, [*self._child_opts(), "--file", str(src)], self.server)
        landed = self.work / "out/output/bench" / src.name
        check_same(src, landed)
        landed.unlink()
        os.sync()  # no writeback left over for the next transfer to compete with
        return sample

    def download(self, client: str, src: Path) -> Sample:
        dest = self.work / "download.bin"
        if client == "curl":
            since, t0 = settled_cpu_seconds(self.server), time.monotonic()
            resp = requests.get(
                f"{self.url}/files/{quote(str(src), safe='/')}/url", headers=self.auth, timeout=30
            )
            resp.raise_for_status()
            req = resp.json()
            headers = [a for k, v in req.get("headers", {}).items() for a in ("-H", f"{k}: {v}")]
            asked_s = time.monotonic() - t0
            sample = curl_sample(
                ["-o", str(dest), *headers, req["url"]], self.server, since, asked_s
            )
        else:
            sample = ours_sample(
                "download",
                [*self._child_opts(), "--file", str(dest), "--file-id", str(src)],
                self.server,
            )
        check_same(src, dest)
        dest.unlink()
        os.sync()
        return sample


def check_same(src: Path, copy: Path) -> None:
    """Same size, same first and last MiB (a full comparison would double the disk reads)."""
    size = src.stat().st_size
    if copy.stat().st_size != size:
        raise RuntimeError(f"{copy} has {copy.stat().st_size} bytes, not {size}")
    with src.open("rb") as a, copy.open("rb") as b:
        for where in (0, max(0, size - BLOCK)):
            a.seek(where)
            b.seek(where)
            if a.read(BLOCK) != b.read(BLOCK):
                raise RuntimeError(f"{copy} differs from {src} near byte {where}")


def write_random(path: Path, size_mib: int) -> None:
    block = os.urandom(BLOCK)
    with path.open("wb") as fh:
        for i in range(size_mib):
            fh.write(block[i % 251 :] + block[: i % 251])  # no two MiB alike


def rotated(clients: tuple[str, ...], by: int) -> tuple[str, ...]:
    by %= len(clients)
    return clients[by:] + clients[:by]


def table_order(key: tuple[str, str]) -> int:
    kind, client = key
    return (0 if kind == "upload" else 10) + (UPLOADS if kind == "upload" else DOWNLOADS).index(
        client
    )


def median(samples: list[Sample], get: Callable[[Sample], float]) -> float:
    return statistics.median(get(s) for s in samples)


def report(size_mib: int, results: dict[tuple[str, str], list[Sample]]) -> list[str]:
    """The table of one size; returns the targets missed."""
    missed = []
    print(f"\n{size_mib} MiB, medians of {len(next(iter(results.values())))} runs")
    head = f"{'':22s} {'MiB/s':>7s} {'client CPU s':>13s} {'server CPU s':>13s} {'client RSS MiB':>15s}   xcurl: {'rate':>5s} {'client':>6s} {'server':>6s}"
    print(head)
    print("-" * len(head))
    for kind in ("upload", "download"):
        base = results.get((kind, "curl"))
        for (k, client), samples in results.items():
            if k != kind:
                continue
            rate = size_mib / median(samples, lambda s: s.seconds)
            ccpu = median(samples, lambda s: s.client_cpu)
            scpu = median(samples, lambda s: s.server_cpu)
            rss = max(s.peak_rss_mib for s in samples)
            line = f"{kind + ' ' + client:22s} {rate:7.0f} {ccpu:13.2f} {scpu:13.2f} {rss:15.1f}"
            if base and client != "curl":
                # each run against curl's of the same round, then the median: a shared box's
                # load drifts over minutes, and the clients of one round see about the same
                ratios = (
                    statistics.median(
                        c.seconds / o.seconds for o, c in zip(samples, base, strict=True)
                    ),
                    statistics.median(
                        o.client_cpu / c.client_cpu for o, c in zip(samples, base, strict=True)
                    ),
                    statistics.median(
                        o.server_cpu / c.server_cpu for o, c in zip(samples, base, strict=True)
                    ),
                )
                line += f"          {ratios[0]:5.2f} {ratios[1]:6.2f} {ratios[2]:6.2f}"
                if kind == "upload" and client == "ours now":
                    if round(ratios[0], 2) < 1.0:
                        missed.append(f"{size_mib} MiB upload rate {ratios[0]:.2f}x curl's (≥ 1.0)")
                    if round(ratios[1], 2) > 2.0:
                        missed.append(
                            f"{size_mib} MiB upload client CPU {ratios[1]:.2f}x curl's (≤ 2)"
                        )
                    if round(ratios[2], 2) > 1.0:
                        missed.append(
                            f"{size_mib} MiB upload server CPU {ratios[2]:.2f}x curl's (≤ 1.0)"
                        )
            print(line)
    return missed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes-mib", default="1024,2048", help="comma-separated file sizes")
    p.add_argument("--reps", type=int, default=5, help="runs of each transfer (medians shown)")
    p.add_argument("--budget-mib", type=float, default=60.0, help="our client's peak RSS budget")
    p.add_argument("--no-downloads", action="store_true")
    p.add_argument(
        "--no-before",
        action="store_true",
        help="leave out the upload as it was (toolbelt): long runs of curl against ours",
    )
    p.add_argument("--api-url", help="a running server (default: start the mock)")
    p.add_argument("--data-root", help="with --api-url: the server's local file store")
    p.add_argument("--token", default=TOKEN, help="a bearer token the server accepts")
    p.add_argument("--api-key", default=KEY, help="the server's x-api-key for POST /_jobs")
    p.add_argument("--server-pid", type=int, action="append", help="instead of finding them")
    p.add_argument(
        "--child", choices=("upload", "upload-toolbelt", "download"), help=argparse.SUPPRESS
    )
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--file-id", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(args)
    if args.api_url and not args.data_root:
        p.error("--api-url needs --data-root: the server's file store, where the files are put")
    if not shutil.which("curl"):
        p.error("curl is needed: the figures are ratios against it")
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    uploads = tuple(c for c in UPLOADS if not (args.no_before and c == "ours before"))

    root = Path(args.data_root or tempfile.mkdtemp(prefix="fetcher-bench-"))
    work = Path(tempfile.mkdtemp(prefix="fetcher-bench-", dir=root)).resolve()
    stack = contextlib.ExitStack()
    mock = not args.api_url
    try:
        if args.api_url:
            url = args.api_url.rstrip("/")
        else:
            from scripts.mock_process import mock_api_process  # not in the children: their RSS

            url = stack.enter_context(mock_api_process(root, args.token, args.api_key))
        port = urlsplit(url).port or 80
        server = args.server_pid or server_pids(port)
        print(
            f"server {url} ({'the mock' if mock else 'given'}), processes {server or 'not found'}"
        )
        if not server:
            print("  (server CPU not measured: no process of this box listens there)")
        bench = Bench(args, url, work, server)
        missed: list[str] = []
        worst_rss = 0.0
        for size in sizes:
            src = work / f"big-{size}.bin"
            write_random(src, size)
            os.sync()
            results: dict[tuple[str, str], list[Sample]] = {}
            for rnd in range(
                args.reps
            ):  # each round in another order: no client always follows another
                for client in rotated(uploads, rnd):
                    bench.keep_alive()  # the server re-queues a job with no news for 300 s
                    results.setdefault(("upload", client), []).append(bench.upload(client, src))
            for rnd in range(0 if args.no_downloads else args.reps):
                for client in rotated(DOWNLOADS, rnd):
                    results.setdefault(("download", client), []).append(bench.download(client, src))
            results = {key: results[key] for key in sorted(results, key=table_order)}
            src.unlink()
            missed += report(size, results)
            worst_rss = max(
                worst_rss,
                *(
                    s.peak_rss_mib
                    for (_, c), ss in results.items()
                    if c.startswith("ours")
                    for s in ss
                ),
            )
        from fetcher.models import JobStatus

        with contextlib.suppress(Exception):  # tidying only
            bench.api.put_status(bench.job, JobStatus.finished)
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
        if not args.data_root:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\ntargets (upload, ours now vs curl): rate ≥ 1.0x, client CPU ≤ 2x, server CPU ≤ 1.0x;"
        f" our client's peak RSS ≤ {args.budget_mib:.0f} MiB (worst {worst_rss:.1f})"
    )
    print("  all met" if not missed else "  missed: " + "; ".join(missed))
    return 0 if worst_rss <= args.budget_mib else 1


if __name__ == "__main__":
    raise SystemExit(main())
