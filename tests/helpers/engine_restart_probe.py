"""What a job's container, docker-py and the engine show when the engine restarts under a job.

    poetry run python -m tests.helpers.engine_restart_probe term [--own-containerd] [--down 2]
    poetry run python -m tests.helpers.engine_restart_probe kill
    poetry run python -m tests.helpers.engine_restart_probe live-term

A private engine (tests/helpers/private_engine.py) runs a job container made like the fetcher's (init,
json-file log, the attach socket opened before the start, `container.wait()` in a thread of its
own) that prints a numbered line every 0.1 s, and a stand-in for the fetcher's own container
(restart policy unless-stopped, traps SIGTERM and goes on). The engine gets SIGTERM or SIGKILL,
stays down `--down` seconds, and starts again (with or without live-restore). Printed: one
timeline (seconds from the signal, on the host's clock) and what the engine says afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from docker.types import LogConfig
from docker.utils.socket import frames_iter

from tests.helpers.private_engine import PrivateEngine, alive

IMAGE = "fetcher-test/busybox:1"
JOB_CMD = 'i=0; while [ $i -lt {n} ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
STANDIN_CMD = (
    'trap "echo TERM >>/out/signals" TERM; echo START >>/out/signals; '
    "while true; do sleep 0.05; done"
)


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.time()
        self.events: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def add(self, what: str, at: float | None = None) -> None:
        with self.lock:
            self.events.append(((at or time.time()), what))

    def rel(self, t: float) -> float:
        return round(t - self.t0, 3)

    def dump(self) -> list[str]:
        return [f"{self.rel(t):+8.3f}  {w}" for t, w in sorted(self.events)]


def parse_ts(text: str) -> float:
    """An engine time (RFC 3339, nanoseconds) as a Unix time."""
    if not text or text.startswith("0001-"):
        return 0.0
    main, _, frac = text.rstrip("Z").partition(".")
    t = time.mktime(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return t + (float("0." + frac) if frac else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["term", "kill", "live-term", "live-kill"])
    ap.add_argument("--own-containerd", action="store_true")
    ap.add_argument("--down", type=float, default=2.0, help="seconds the engine stays down")
    ap.add_argument("--sleep-job", action="store_true", help="the job is `sleep 100`, silent")
    ap.add_argument(
        "--lines", type=int, default=600, help="the job prints this many lines, 10 a second"
    )
    ap.add_argument("--restart-live", choices=["same", "on", "off"], default="same")
    args = ap.parse_args()
    live = args.mode.startswith("live")
    sig = signal.SIGKILL if args.mode.endswith("kill") else signal.SIGTERM
    base = Path(tempfile.mkdtemp(prefix="probe-", dir="/tmp"))
    report: dict[str, Any] = {"mode": args.mode, "own_containerd": args.own_containerd}
    with PrivateEngine(base, live_restore=live, own_containerd=args.own_containerd) as engine:
        report["timings_up"] = dict(engine.timings)
        engine.load_image(IMAGE)
        client = engine.client
        out = base / "standin"
        out.mkdir()
        standin = client.containers.run(
            IMAGE,
            ["/bin/sh", "-c", STANDIN_CMD],
            detach=True,
            restart_policy={"Name": "unless-stopped"},
            volumes={str(out): {"bind": "/out", "mode": "rw"}},
            name="standin",
        )
        cmd = ["/bin/sh", "-c", "sleep 100" if args.sleep_job else JOB_CMD.format(n=args.lines)]
        job = client.containers.create(
            IMAGE,
            cmd,
            init=True,
            detach=True,
            name="job",
            log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "1"}),
        )
        sock = client.api.attach_socket(
            job.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
        )
        job.start()
        job.reload()
        job_pid = int(job.attrs["State"]["Pid"])
        standin.reload()
        standin_pid = int(standin.attrs["State"]["Pid"])
        tl = Timeline()
        attached: list[tuple[float, bytes]] = []
        stop = threading.Event()

        def read_attach() -> None:
            try:
                for _kind, data in frames_iter(sock, tty=False):
                    attached.append((time.time(), data))
                tl.add("attach: stream ended (EOF)")
            except Exception as exc:
                tl.add(f"attach: {type(exc).__module__}.{type(exc).__name__}: {exc}")

        def wait_job() -> None:
            waiter = engine.new_client(timeout=None)
            try:
                result = waiter.containers.get(job.id).wait()
                tl.add(f"wait(): returned {result}")
            except Exception as exc:
                tl.add(f"wait(): {type(exc).__module__}.{type(exc).__name__}: {exc}")
                report["wait_exception"] = [
                    f"{type(exc).__module__}.{type(exc).__name__}",
                    str(exc),
                ]
                report["wait_exception_mro"] = [c.__name__ for c in type(exc).__mro__]

        def ping() -> None:
            last = None
            while not stop.is_set():
                try:
                    engine.new_client(timeout=1).ping()
                    state = "up"
                except Exception as exc:
                    state = f"down ({type(exc).__name__}: {str(exc)[:90]})"
                if state != last:
                    tl.add(f"API {state}")
                    last = state
                time.sleep(0.02)

        def watch_pids() -> None:
            seen: set[str] = set()
            standin_lines = 0
            while not stop.is_set():
                for name, pid in (("job", job_pid), ("standin", standin_pid)):
                    if name not in seen and not alive(pid):
                        seen.add(name)
                        tl.add(f"{name}'s process {pid} is gone")
                with_term = (out / "signals").read_text().splitlines()
                for line in with_term[standin_lines:]:
                    tl.add(f"standin wrote {line}")
                standin_lines = len(with_term)
                dpid = engine.dockerd_pid()
                if "dockerd" not in seen and dpid is None:
                    seen.add("dockerd")
                    tl.add("dockerd's process is gone")
                ctd = engine.managed_containerd_pid()
                if "ctd" not in seen and ctd is None and not args.own_containerd:
                    seen.add("ctd")
                    tl.add("the managed containerd is gone")
                time.sleep(0.01)

        threads = [threading.Thread(target=f, daemon=True) for f in (read_attach, wait_job)]
        watchers = [threading.Thread(target=f, daemon=True) for f in (ping, watch_pids)]
        for t in threads + watchers:
            t.start()
        time.sleep(1.5)
        tl.t0 = time.time()
        tl.add(f"SIG{sig.name[3:]} to dockerd")
        pid = engine.signal(sig)
        engine.wait_exit(pid)
        time.sleep(args.down)
        report["job_process_alive_while_down"] = alive(job_pid)
        report["managed_containerd_alive_while_down"] = engine.managed_containerd_pid() is not None
        restart_live = {"same": None, "on": True, "off": False}[args.restart_live]
        tl.add("starting dockerd again")
        engine.start(restart_live)
        tl.add("dockerd answers again")
        time.sleep(1.0)
        job.reload()
        standin.reload()
        report["job_state"] = job.attrs["State"]
        report["job_restart_count"] = job.attrs.get("RestartCount")
        report["standin_state"] = standin.attrs["State"]
        report["standin_restart_count"] = standin.attrs.get("RestartCount")
        for name, st in (("job", job.attrs["State"]), ("standin", standin.attrs["State"])):
            for key in ("StartedAt", "FinishedAt"):
                if parse_ts(st[key]):
                    tl.add(f"{name} State.{key} ({st[key]})", parse_ts(st[key]))
        report["events_since_start"] = [
            f"{tl.rel(e['timeNano'] / 1e9):+.3f} {e['Type']} {e['Action']} {e['Actor'].get('Attributes', {}).get('name', '')}"
            f" {json.dumps({k: v for k, v in e['Actor'].get('Attributes', {}).items() if k in ('exitCode', 'signal')})}"
            for e in client.events(since=int(tl.t0) - 30, until=int(time.time()) + 1, decode=True)
        ]
        eof = [t for t, w in tl.events if w.startswith("attach: stream ended")]
        if eof:
            rest = job.logs(since=eof[0]).decode().splitlines()
            report["logs_since_attach_eof_before_wait"] = [len(rest), rest[:1], rest[-1:]]
        if job.status == "running":
            began = time.time()
            try:
                res = engine.new_client(timeout=None).containers.get(job.id).wait()
                report["wait_after_restart"] = f"{res} after {time.time() - began:.2f}s"
            except Exception as exc:
                report["wait_after_restart"] = (
                    f"{type(exc).__name__} after {time.time() - began:.2f}s"
                )
            job.reload()
            report["job_state_at_end"] = job.attrs["State"]
        if eof:
            rest = job.logs(since=eof[0]).decode().splitlines()
            report["logs_since_attach_eof"] = [len(rest), rest[:1], rest[-1:]]
        # the engine's log vs. what the attach stream delivered
        got = b"".join(d for _t, d in attached).decode()
        attach_lines = got.splitlines()
        engine_log = job.logs(timestamps=True).decode().splitlines()
        report["attach_lines"] = [len(attach_lines), attach_lines[:1], attach_lines[-1:]]
        report["engine_log_lines"] = [len(engine_log), engine_log[:1], engine_log[-3:]]
        if attach_lines:
            last = attach_lines[-1]
            rest = [ln for ln in engine_log if ln.split(" ", 1)[1] == last]
            report["attach_last_in_engine_log"] = rest
            # the engine log's lines after the attach stream's last, with their timestamps
            idx = [i for i, ln in enumerate(engine_log) if ln.split(" ", 1)[1] == last]
            if idx:
                after = engine_log[idx[-1] + 1 :]
                report["engine_log_after_attach"] = [len(after), after[:3], after[-2:]]
                stamps = [parse_ts(ln.split(" ", 1)[0]) for ln in after]
                if stamps:
                    report["after_attach_stamps_rel"] = [tl.rel(stamps[0]), tl.rel(stamps[-1])]
        numbers = [
            int(ln.split()[-1])
            for ln in (x.split(" ", 1)[1] for x in engine_log)
            if ln.startswith("line ")
        ]
        report["engine_log_gaps_or_dups"] = [
            (a, b) for a, b in itertools.pairwise(numbers) if b != a + 1
        ]
        if attached:
            tl.add(f"attach: last chunk read ({attached[-1][1][-20:]!r})", attached[-1][0])
        stop.set()
        for t in threads:
            t.join(5)
        # a second job runs to its end
        second = client.containers.run(IMAGE, ["/bin/sh", "-c", "echo ok"], detach=True, init=True)
        report["second_job"] = [second.wait(timeout=30), second.logs().decode().strip()]
        report["timeline"] = tl.dump()
        report["timings"] = dict(engine.timings)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
