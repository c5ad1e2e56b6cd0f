"""A private engine (tests/helpers/private_engine.py) restarted, stopped and killed under a job made like
the fetcher's, and the engine facts the fetcher relies on (Docker 20.10 with its managed or an own
containerd, docker-py 7). Each test asserts what was observed: if an engine changes it, it fails.

Facts pinned here (timeline from the signal to dockerd):
- SIGTERM, no live-restore: the API socket goes first (~2 ms: a new connection fails with
  ConnectionError/FileNotFoundError; a kept-alive one may still be answered until dockerd exits),
  then the engine stops every container at once (SIGTERM, SIGKILL after the container's own stop
  timeout, which dockerd waits for). A `wait()` already in flight is answered normally,
  {'StatusCode': 143}, ~0.1 s after the signal; the attach stream ends in EOF. After the restart
  the container is `exited 143, Error ""`, FinishedAt ~15 ms after the signal: nothing in inspect
  or the events tells it from a `docker stop` or the job's own SIGTERM. An unless-stopped
  container (the fetcher's) gets SIGTERM with the jobs, keeps its network until its SIGKILL, and
  is started again with the engine.
- SIGKILL, no live-restore: wait() raises ChunkedEncodingError, the attach stream ends in EOF, the
  API refuses; the container runs on (its shim). The next dockerd stops it while it restores,
  before its API answers (events kill/die/stop), and an unless-stopped container stays stopped
  (one with `always` is started again).
- live-restore: the container runs on; wait() raises ChunkedEncodingError and the attach stream
  ends (EOF) when dockerd exits; after the restart wait() works, the engine's log holds all output
  (what was written while dockerd was down is stamped when the new dockerd read it), and
  `logs(since=<the moment the attach stream ended>)` is exactly what the stream missed; a
  re-attach misses it. A job that ends while dockerd is down keeps its exit code and FinishedAt,
  and loses what it wrote meanwhile.
- socket activation (systemd's docker.socket): a new connection during the restart is accepted
  and waits (no refusal): it is answered by the next dockerd, after its restore.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from docker.types import LogConfig
from docker.utils.socket import frames_iter

from tests.conftest import IN_CI
from tests.helpers import IMAGE
from tests.helpers.private_engine import SCRIPT, PrivateEngine, alive

pytestmark = [pytest.mark.docker, pytest.mark.slow]

LINES = 'i=0; while [ $i -lt {n} ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
# the fetcher's own container, as `docker run --restart unless-stopped`: notes SIGTERM, goes on
STANDIN = (
    'trap "echo TERM >>/out/signals" TERM; echo START >>/out/signals; '
    "while true; do sleep 0.01; done"
)


def _tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in (
        "/usr/sbin/dockerd",
        "/usr/bin/containerd",
        "ip",
        "nsenter",
        "unshare",
        "curl",
        "jq",
    ):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture
def engines(tmp_path: Path, docker_client: Any) -> Iterator[Callable[..., PrivateEngine]]:
    """Private engines for one test (the system engine only lends the test image); each is
    taken down afterwards, and nothing of it may be left."""
    missing = _tools_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"private engine: {missing}")
        pytest.skip(f"private engine: {missing}")
    made: list[PrivateEngine] = []

    def make(**kwargs: Any) -> PrivateEngine:
        base = tmp_path / f"e{len(made)}"
        base.mkdir()
        engine = PrivateEngine(base, **kwargs)
        made.append(engine)
        engine.up()
        engine.load_image(IMAGE)
        return engine

    yield make
    for engine in made:
        engine.close()
        print(f"private engine {engine.dir}: {engine.timings} {engine.notes}")
        assert engine.leftovers() == []


# --- a job made like the fetcher's, and what its observers saw ----------------------------------
@dataclass
class Job:
    container: Any
    pid: int
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    attach_end: tuple[float, str] | None = None  # when, and "EOF" or the exception's class
    waiting: threading.Event = field(default_factory=threading.Event)  # wait() is being sent
    waited: threading.Event = field(default_factory=threading.Event)
    wait_at: float = 0.0
    wait_result: Any = None  # wait()'s answer, or the exception it raised

    def output(self) -> str:
        return b"".join(data for _t, data in self.chunks).decode()


def start_job(engine: PrivateEngine, command: str) -> Job:
    """Created as the fetcher creates a job (init, bounded json-file log), its attach socket
    opened before the start and read in a thread, `wait()` blocked in a thread of its own."""
    client = engine.client
    container = client.containers.create(
        IMAGE,
        ["/bin/sh", "-c", command],
        init=True,
        log_config=LogConfig(type="json-file", config={"max-size": "20m", "max-file": "1"}),
    )
    sock = client.api.attach_socket(
        container.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
    )
    container.start()
    container.reload()
    job = Job(container, int(container.attrs["State"]["Pid"]))

    def read() -> None:
        try:
            for _kind, data in frames_iter(sock, tty=False):
                job.chunks.append((time.time(), data))
            job.attach_end = (time.time(), "EOF")
        except Exception as exc:
            job.attach_end = (time.time(), type(exc).__name__)

    def wait() -> None:
        waiter = engine.new_client(timeout=None)
        try:
            waiter.ping()  # connected
            job.waiting.set()
            job.wait_result = waiter.api.wait(container.id)
        except Exception as exc:
            job.wait_result = exc
        job.wait_at = time.time()
        job.waited.set()

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=wait, daemon=True).start()
    assert job.waiting.wait(10)
    time.sleep(0.2)  # its request on the way: a signal must not come before the engine has it
    return job


def start_standin(engine: PrivateEngine, out: Path, stop_timeout: int, policy: str) -> Any:
    out.mkdir(exist_ok=True)
    api = engine.client.api
    created = api.create_container(
        IMAGE,
        ["/bin/sh", "-c", STANDIN],
        stop_timeout=stop_timeout,  # not a `containers.run` argument in docker-py
        host_config=api.create_host_config(
            restart_policy={"Name": policy}, binds={str(out): {"bind": "/out", "mode": "rw"}}
        ),
    )
    api.start(created["Id"])
    return engine.client.containers.get(created["Id"])


def pid_of(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


class Marks:
    """The first moment each condition held, polled every 0.5 ms for the first second."""

    def __init__(self, probes: dict[str, Callable[[], bool]], seconds: float) -> None:
        self.at: dict[str, float] = {}
        self._probes = probes
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()

    def _run(self, seconds: float) -> None:
        t0 = time.time()
        while time.time() - t0 < seconds and len(self.at) < len(self._probes):
            for name, probe in self._probes.items():
                if name not in self.at and probe():
                    self.at[name] = time.time()
            time.sleep(0.0005 if time.time() - t0 < 1 else 0.01)

    def join(self) -> dict[str, float]:
        self._thread.join()
        return self.at


def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def engine_time(text: str) -> float:
    """An engine timestamp (RFC 3339 with nanoseconds) as a Unix time."""
    main, _, frac = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(main + "+00:00").timestamp()
    return whole + float("0." + (frac or "0"))


def log_lines(container: Any, **kwargs: Any) -> list[tuple[float, str]]:
    """The engine's log of the container: (timestamp, line)."""
    text = container.logs(timestamps=True, **kwargs).decode()
    rows = []
    for row in text.splitlines():
        stamp, _, line = row.partition(" ")
        rows.append((engine_time(stamp), line))
    return rows


def fresh_api_error(engine: PrivateEngine) -> BaseException | None:
    """What a new connection to the API gets now (None: an answer)."""
    client = engine.new_client(timeout=2)
    try:
        client.ping()
    except Exception as exc:
        return exc
    finally:
        client.close()
    return None


def second_job_finishes(engine: PrivateEngine) -> None:
    c = engine.client.containers.run(IMAGE, ["/bin/sh", "-c", "echo ok"], detach=True, init=True)
    assert c.wait(timeout=30) == {"Error": None, "StatusCode": 0}
    assert c.logs() == b"ok\n"


STATE_STOPPED_143 = {
    "Status": "exited",
    "Running": False,
    "Paused": False,
    "Restarting": False,
    "OOMKilled": False,
    "Dead": False,
    "Pid": 0,
    "ExitCode": 143,
    "Error": "",
}


def comparable(inspect: dict[str, Any]) -> dict[str, Any]:
    """An inspect without what differs between any two containers (ids, names, times, paths)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        else:
            flat[key] = value

    walk(inspect, "")
    volatile = (
        "Id", "Created", "Name", "Args", "Config.Cmd", "Config.Hostname", "HostnamePath",
        "HostsPath", "ResolvConfPath", "LogPath", "GraphDriver.", "NetworkSettings.SandboxID",
        "NetworkSettings.SandboxKey", "State.StartedAt", "State.FinishedAt",
    )  # fmt: skip
    return {k: v for k, v in flat.items() if not any(k.startswith(p) for p in volatile)}


# --- the harness --------------------------------------------------------------------------------
def test_script_refuses_directories_outside_tmp(tmp_path: Path) -> None:
    if _tools_missing():
        pytest.skip(str(_tools_missing()))
    link = tmp_path / "link"
    link.symlink_to("/etc")
    long_dir = tmp_path / ("d" * 70)
    long_dir.mkdir()
    for target, why in (
        ("/etc", "is not under /tmp"),
        ("/", "is not under /tmp"),
        ("/tmp", "is not under /tmp"),
        (str(tmp_path / "missing"), "is not an existing directory"),
        (str(link), "is not an existing directory"),
        (str(long_dir), "longer than 64"),
    ):
        done = subprocess.run(
            [str(SCRIPT), "up", target], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, (target, done.stderr)
        assert why in done.stderr, (target, done.stderr)
    assert not (tmp_path / "missing").exists()


def test_private_engine_is_private_and_goes_without_a_trace(
    engines: Callable[..., PrivateEngine], docker_client: Any
) -> None:
    docker0 = Path("/sys/class/net/docker0/ifindex")
    before = docker0.read_text() if docker0.exists() else None
    engine = engines()
    info = engine.client.info()
    assert info["DockerRootDir"] == str(engine.dir / "data")
    assert info["LiveRestoreEnabled"] is False
    assert info["CgroupDriver"] == "cgroupfs"
    out = engine.client.containers.run(IMAGE, ["cat", "/proc/self/cgroup"], remove=True)
    assert f":/{engine.name}/" in out.decode()
    assert Path(f"/run/netns/{engine.name}").exists()
    # dockerd's mounts live in its own mount namespace: none under its directory here
    assert str(engine.dir) not in Path("/proc/self/mountinfo").read_text()
    # the host's bridge and engine are as they were
    assert (docker0.read_text() if docker0.exists() else None) == before
    assert docker_client.ping()
    # restart keeps the mode or changes it
    engine.restart(live_restore=True)
    assert engine.client.info()["LiveRestoreEnabled"] is True
    engine.restart()
    assert engine.client.info()["LiveRestoreEnabled"] is True
    engine.restart(live_restore=False)
    assert engine.client.info()["LiveRestoreEnabled"] is False
    assert engine.timings["up"] < 30
    assert engine.timings["load_image"] < 30
    second_job_finishes(engine)
    engine.close()
    assert engine.leftovers() == []
    assert docker_client.ping()
    assert (docker0.read_text() if docker0.exists() else None) == before


# --- SIGTERM without live-restore -------------------------------------------------------------
@pytest.mark.parametrize(
    "own_containerd", [False, True], ids=["managed-containerd", "own-containerd"]
)
def test_sigterm_without_live_restore(
    engines: Callable[..., PrivateEngine], tmp_path: Path, own_containerd: bool
) -> None:
    engine = engines(own_containerd=own_containerd)
    out = tmp_path / "standin"
    standin = start_standin(engine, out, stop_timeout=2, policy="unless-stopped")
    # for comparison: a `docker stop`ped container and one ended by its own SIGTERM
    by_stop = start_job(engine, "echo started; sleep 100").container
    by_self = start_job(engine, "kill -TERM $$; sleep 5").container
    job = start_job(engine, "echo started; sleep 100")
    until(lambda: job.output() == "started\n", 10, "the job's first line")
    until(lambda: (out / "signals").exists(), 10, "the stand-in runs")
    by_stop.stop(timeout=5)
    assert by_self.wait(timeout=10)["StatusCode"] == 143
    standin_pid = pid_of(standin)
    marks = Marks(
        {
            "socket gone": lambda: not engine.socket.exists(),
            "job gone": lambda: not alive(job.pid),
            "standin TERM": lambda: "TERM" in (out / "signals").read_text(),
            "standin gone": lambda: not alive(standin_pid),
        },
        seconds=6,
    )
    pooled = engine.new_client()
    pooled.api.inspect_container(job.container.id)  # a keep-alive connection in its pool
    t_signal = time.time()
    dockerd = engine.signal(signal.SIGTERM)
    assert job.waited.wait(5)
    # the moment wait() answers, a new connection fails: the socket file is removed ...
    fresh = fresh_api_error(engine)
    assert isinstance(fresh, requests.exceptions.ConnectionError)
    assert isinstance(fresh.args[0].args[1], FileNotFoundError)
    # ... but a kept-alive connection is still answered, as if all were well
    assert pooled.api.inspect_container(job.container.id)["State"]["ExitCode"] == 143
    engine.wait_exit(dockerd)
    t_exit = time.time()
    at = marks.join()

    # the API goes first, then the containers are stopped; wait() is answered normally after
    assert at["socket gone"] - t_signal < 0.5
    assert at["socket gone"] <= at["job gone"] < t_signal + 1
    assert job.wait_result == {"Error": None, "StatusCode": 143}
    assert at["job gone"] <= job.wait_at < t_signal + 1
    assert job.attach_end is not None and job.attach_end[1] == "EOF"
    assert job.output() == "started\n"
    # the stand-in (the fetcher's container) gets SIGTERM with the job, SIGKILL after its stop timeout
    assert abs(at["standin TERM"] - at["job gone"]) < 0.5
    assert 1.9 < at["standin gone"] - t_signal < 3.5
    assert t_exit > at["standin gone"]

    t_start = time.time()
    engine.start()
    state = engine.client.api.inspect_container(job.container.id)["State"]
    assert {k: state[k] for k in STATE_STOPPED_143} == STATE_STOPPED_143
    finished = engine_time(state["FinishedAt"])
    assert t_signal < finished < at["job gone"] + 0.2
    # nothing tells an engine shutdown from a `docker stop` or the job's own SIGTERM
    same = [comparable(engine.client.api.inspect_container(c.id)) for c in (by_stop, by_self)]
    mine = comparable(engine.client.api.inspect_container(job.container.id))
    for other in same:
        assert {k: v for k, v in mine.items() if other.get(k) != v} == {}
    # ... and the new engine has no event of it: the events of the old one are gone with it
    events = list(engine.client.events(since=t_signal - 30, until=time.time() + 1, decode=True))
    assert [e for e in events if e.get("id") == job.container.id] == []
    assert {(e["Type"], e["Action"]) for e in events} <= {
        ("network", "connect"),
        ("container", "start"),
    }
    # the stand-in came back with the engine: a fresh start, no restart counted
    standin.reload()
    assert standin.status == "running"
    assert standin.attrs["RestartCount"] == 0
    assert engine_time(standin.attrs["State"]["StartedAt"]) > t_start
    assert abs(engine_time(standin.attrs["State"]["FinishedAt"]) - at["standin gone"]) < 0.3
    second_job_finishes(engine)


# --- SIGKILL without live-restore -------------------------------------------------------------
@pytest.mark.parametrize(
    "own_containerd", [False, True], ids=["managed-containerd", "own-containerd"]
)
def test_sigkill_without_live_restore(
    engines: Callable[..., PrivateEngine], tmp_path: Path, own_containerd: bool
) -> None:
    engine = engines(own_containerd=own_containerd)
    unless_stopped = start_standin(engine, tmp_path / "u", stop_timeout=1, policy="unless-stopped")
    always = start_standin(engine, tmp_path / "a", stop_timeout=1, policy="always")
    job = start_job(engine, LINES.format(n=600))
    until(lambda: "line 5\n" in job.output(), 10, "the job's output")
    containerd = engine.managed_containerd_pid()
    engine.sigkill()
    assert job.waited.wait(5)
    assert isinstance(job.wait_result, requests.exceptions.ChunkedEncodingError)
    assert "Response ended prematurely" in str(job.wait_result)
    until(lambda: job.attach_end is not None, 5, "the attach stream ends")
    assert job.attach_end is not None and job.attach_end[1] == "EOF"
    fresh = fresh_api_error(engine)
    assert isinstance(fresh, requests.exceptions.ConnectionError)
    assert isinstance(fresh.args[0].args[1], ConnectionRefusedError)  # the socket file stays
    time.sleep(1)
    assert alive(job.pid)  # the job runs on, its shim holds it
    if own_containerd:
        assert engine.own_containerd_pid() is not None
    else:  # dockerd's own containerd dies with it (a parent-death signal)
        assert containerd is not None and not alive(containerd)
    attached_last = int(job.output().splitlines()[-1].split()[1])

    t_start = time.time()
    engine.start()
    t_api = time.time()
    # the new dockerd stopped the job while it restored, before its API answered
    state = engine.client.api.inspect_container(job.container.id)["State"]
    assert {k: state[k] for k in STATE_STOPPED_143} == STATE_STOPPED_143
    assert t_start < engine_time(state["FinishedAt"]) < t_api
    assert not alive(job.pid)
    events = [
        (
            e["Action"],
            e["Actor"]["Attributes"].get("signal") or e["Actor"]["Attributes"].get("exitCode"),
        )
        for e in engine.client.events(since=t_start - 1, until=time.time() + 1, decode=True)
        if e.get("id") == job.container.id
    ]
    assert events == [("kill", "15"), ("die", "143"), ("stop", None)]
    # its output while dockerd was down is in the engine's log, stamped when the new one read it
    rows = log_lines(job.container)
    numbers = [int(line.split()[1]) for _t, line in rows]
    assert numbers == list(range(len(numbers)))
    assert numbers[-1] > attached_last
    assert all(t > t_start for t, line in rows if int(line.split()[1]) > attached_last)
    # unless-stopped: stopped by the restore, and not started again; always: started again
    time.sleep(2)
    unless_stopped.reload()
    always.reload()
    assert unless_stopped.status == "exited"
    assert unless_stopped.attrs["State"]["ExitCode"] == 137  # it ignores SIGTERM
    assert always.status == "running"
    assert engine_time(always.attrs["State"]["StartedAt"]) > t_start
    second_job_finishes(engine)


# --- live-restore ------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_live_restore_job_runs_on_and_its_log_is_whole(
    engines: Callable[..., PrivateEngine], tmp_path: Path, sig: signal.Signals
) -> None:
    engine = engines(live_restore=True)
    out = tmp_path / "standin"
    standin = start_standin(engine, out, stop_timeout=2, policy="unless-stopped")
    standin.reload()
    standin_started = standin.attrs["State"]["StartedAt"]
    total = 70
    job = start_job(engine, LINES.format(n=total))
    until(lambda: "line 5\n" in job.output(), 10, "the job's output")
    t_signal = time.time()
    dockerd = engine.signal(sig)
    assert job.waited.wait(10)
    engine.wait_exit(dockerd)
    t_exit = time.time()
    until(lambda: job.attach_end is not None, 5, "the attach stream ends")
    assert job.attach_end is not None
    t_eof, how = job.attach_end
    # wait() and the attach stream end when dockerd exits (a SIGTERM lets it stream ~1 s more)
    assert isinstance(job.wait_result, requests.exceptions.ChunkedEncodingError)
    assert how == "EOF"
    assert t_signal < t_eof < t_exit + 0.1
    assert t_signal < job.wait_at < t_exit + 0.1
    time.sleep(1)
    assert alive(job.pid)

    t_start = time.time()
    engine.start()
    reattached = engine.client.api.attach_socket(
        job.container.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
    )
    followed: list[bytes] = []  # what a follower of the engine's log from there on gets
    follower = threading.Thread(
        target=lambda: followed.extend(
            engine.new_client(timeout=None)
            .containers.get(job.container.id)
            .logs(stream=True, follow=True, since=t_eof)
        ),
        daemon=True,
    )
    follower.start()
    job.container.reload()
    assert job.container.status == "running"
    assert job.container.attrs["RestartCount"] == 0
    # wait() works again and gets the job's real end
    assert job.container.wait(timeout=30) == {"Error": None, "StatusCode": 0}
    again = b"".join(d for _k, d in frames_iter(reattached, tty=False)).decode()
    follower.join(10)
    assert not follower.is_alive()  # the follow ends with the container

    attached = job.output().splitlines()
    rest = [line for _t, line in log_lines(job.container, since=t_eof)]
    whole = [line for _t, line in log_lines(job.container)]
    assert whole == [f"line {i}" for i in range(total)]
    # the engine's log since the attach stream ended is exactly what the stream missed, and a
    # follower from there on gets it all, up to the job's end
    assert attached + rest == whole
    assert b"".join(followed).decode().splitlines() == rest
    # what the job wrote while dockerd was down is stamped when the new dockerd read it
    stamped = log_lines(job.container, since=t_eof)
    assert stamped[0][0] > t_start
    # a re-attach after the restart misses that part: it starts at the live output
    assert again.splitlines()[-1] == f"line {total - 1}"
    assert again.splitlines()[0] != rest[0]
    assert set(again.splitlines()) < set(rest)
    # the stand-in was never signalled
    standin.reload()
    assert standin.status == "running"
    assert standin.attrs["State"]["StartedAt"] == standin_started
    assert (out / "signals").read_text() == "START\n"
    second_job_finishes(engine)


def test_live_restore_job_ending_while_dockerd_is_down(
    engines: Callable[..., PrivateEngine],
) -> None:
    engine = engines(live_restore=True)
    job = start_job(engine, "echo a; sleep 1.5; echo b; exit 3")
    until(lambda: job.output() == "a\n", 10, "the job's first line")
    engine.sigterm()
    until(lambda: not alive(job.pid), 10, "the job ends while dockerd is down")
    t_end = time.time()
    time.sleep(0.5)
    t_start = time.time()
    engine.start()
    state = engine.client.api.inspect_container(job.container.id)["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 3
    # when it ended (its shim noted it), not when the new dockerd learnt of it
    assert t_end - 1 < engine_time(state["FinishedAt"]) < t_end + 0.2 < t_start
    assert job.container.wait(timeout=10) == {"Error": None, "StatusCode": 3}
    # the line it wrote while dockerd was down is lost: no reader took it off the pipe
    assert [line for _t, line in log_lines(job.container)] == ["a"]
    second_job_finishes(engine)


# --- socket activation (systemd's docker.socket) ------------------------------------------------
def test_sigterm_with_socket_activation(engines: Callable[..., PrivateEngine]) -> None:
    """As docker-ce and Debian's docker.io run under systemd (-H fd://): the socket outlives
    dockerd, so while the engine is down or restarting a new connection is not refused: its
    request waits, and the next dockerd answers it once it has restored its containers."""
    engine = engines(socket_activation=True)
    job = start_job(engine, "echo started; sleep 100")
    until(lambda: job.output() == "started\n", 10, "the job's first line")
    t_signal = time.time()
    dockerd = engine.signal(signal.SIGTERM)
    assert job.waited.wait(5)
    assert job.wait_result == {"Error": None, "StatusCode": 143}
    assert job.wait_at - t_signal < 1
    assert job.attach_end is not None and job.attach_end[1] == "EOF"
    # a fresh connection right after wait() answered: accepted, and no answer
    t_ping = time.time()
    fresh = fresh_api_error(engine)
    assert isinstance(fresh, requests.exceptions.ReadTimeout), fresh
    assert 1.9 < time.time() - t_ping < 3
    engine.wait_exit(dockerd)
    asked: dict[str, Any] = {}

    def inspect_while_down() -> None:
        client = engine.new_client(timeout=60)
        asked["state"] = client.api.inspect_container(job.container.id)["State"]
        asked["at"] = time.time()

    waiting = threading.Thread(target=inspect_while_down, daemon=True)
    waiting.start()
    time.sleep(1)
    assert waiting.is_alive()
    t_start = time.time()
    engine.start()
    waiting.join(10)
    assert asked["at"] > t_start
    assert {k: asked["state"][k] for k in STATE_STOPPED_143} == STATE_STOPPED_143
    assert t_signal < engine_time(asked["state"]["FinishedAt"]) < job.wait_at
    second_job_finishes(engine)


def test_fetchers_container_keeps_its_network_until_its_stop_timeout(
    engines: Callable[..., PrivateEngine], tmp_path: Path
) -> None:
    """The fetcher in a container gets SIGTERM with the jobs when the engine shuts down, and
    until its own stop timeout passes (dockerd waits as long as a container's stop timeout asks,
    past its --shutdown-timeout) it still reaches the host: it can hand its jobs back then."""
    engine = engines()
    served = tmp_path / "served"
    served.mkdir()
    (served / "x").write_text("hi\n")
    server = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{engine.name}", "/usr/bin/python3", "-m", "http.server",
         "8000", "--bind", "172.17.0.1", "--directory", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = tmp_path / "out"
        out.mkdir()
        ask = r'printf "GET /x HTTP/1.0\r\n\r\n" | nc -w 1 172.17.0.1 8000 | grep -q hi'
        loop = (
            f'trap "T=1" TERM; T=0; until {ask}; do sleep 0.1; done; echo UP >>/out/net; '
            f"while true; do if [ $T = 1 ]; then {ask} && echo OK >>/out/net || echo FAIL >>/out/net; fi; "
            "sleep 0.3; done"
        )
        api = engine.client.api
        standin = api.create_container(
            IMAGE,
            ["/bin/sh", "-c", loop],
            stop_timeout=3,
            host_config=api.create_host_config(
                restart_policy={"Name": "unless-stopped"},
                binds={str(out): {"bind": "/out", "mode": "rw"}},
            ),
        )["Id"]
        api.start(standin)
        until(lambda: (out / "net").exists(), 15, "the stand-in reaches the host")
        pid = pid_of(engine.client.containers.get(standin))
        t_signal = time.time()
        engine.sigterm()
        assert not alive(pid)
        results = (out / "net").read_text().split()
        assert results[0] == "UP"
        assert len(results) >= 1 + 7  # asked every 0.3 s for 3 s
        assert set(results[1:]) == {"OK"}
        engine.start()
        finished = engine_time(api.inspect_container(standin)["State"]["FinishedAt"])
        assert 3 < finished - t_signal < 3.5  # SIGKILL after its stop timeout
        second_job_finishes(engine)
    finally:
        server.terminate()
        server.wait(10)
