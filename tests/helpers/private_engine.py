"""A private Docker engine for tests that restart, stop or kill the engine under a running job.

    with PrivateEngine(tmp_path, live_restore=False) as engine:
        engine.load_image(IMAGE)              # copied from the system engine (save | load)
        c = engine.client.containers.run(IMAGE, "sleep 100", detach=True, init=True)
        engine.restart()                      # SIGTERM to its dockerd, wait for the exit, start it
        engine.sigterm(); ...; engine.start(live_restore=True)   # or step by step

It is `scripts/private-engine.sh` (every path under one directory in /tmp, its own network and
mount namespaces: the host's engine, docker0, iptables rules and mount table are never touched),
driven from Python: `up` on enter, `down` on exit (its containers, dockerd, containerd, shims,
the namespaces and its state go; `dockerd.log` stays in the directory for a post-mortem). The
signals go from here, to the pid of the dockerd it started (checked by its command line), so a test
can act between the signal and the exit. Cost on a 2-core host (5 runs, median): `up` 0.8 s
(0.3-1.0), `load_image` of a 2 MB image 0.3 s, a first job 0.4 s, `restart` 1.7 s (dockerd takes 1.0 s
to exit on SIGTERM with no container left, then 0.7 s to answer), `down` 1.5 s. A container that
ignores SIGTERM holds a SIGTERM (and `down`) for its stop timeout (10 s by default).

The directory: `base/pe` when that is at most 64 characters, else a `mkdtemp` under /tmp (removed on
close): containerd refuses socket paths over 104 bytes, and its longest is
`DIR/x/containerd/containerd.sock.ttrpc` (dockerd then fails after a minute).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import docker
import requests

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "private-engine.sh"
MAX_DIR_LEN = 64  # as the script: the engine's unix sockets live under the directory


def system_client() -> Any:
    return docker.from_env()


class PrivateEngine:
    """A second dockerd of its own, in a directory under /tmp. Needs root, `ip`, `nsenter`,
    `unshare`, `curl`, `jq` and the dockerd/containerd of the host (not its engine's state)."""

    def __init__(
        self,
        base: Path,
        *,
        live_restore: bool = False,
        own_containerd: bool = False,
        socket_activation: bool = False,
        start_timeout_s: float = 90,
    ) -> None:
        base = Path(base).resolve()
        self._own_dir: Path | None = None
        if len(str(base / "pe")) > MAX_DIR_LEN:  # pytest's tmp_path of a long test name
            self._own_dir = Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
            self.dir = self._own_dir
        else:
            self.dir = base / "pe"
            self.dir.mkdir(exist_ok=True)
        self.live_restore = live_restore
        self.own_containerd = own_containerd
        self.socket_activation = socket_activation
        self.start_timeout_s = start_timeout_s
        self.socket = self.dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log = self.dir / "dockerd.log"
        # as the script names them: the network namespace and the cgroup parent of its containers
        self.name = "pe-" + hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self._client: Any = None
        self._containerd: int | None = None  # the managed containerd when dockerd was signalled
        self.timings: dict[str, float] = {}  # seconds each step took, last time
        self.notes: list[str] = []  # what went oddly (shown by the tests' fixture)

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> PrivateEngine:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def up(self) -> None:
        flags = ["--live-restore"] if self.live_restore else []
        if self.own_containerd:
            flags.append("--own-containerd")
        if self.socket_activation:
            flags.append("--socket-activation")
        self._script("up", *flags, step="up")

    def close(self) -> None:
        """Everything goes: containers, dockerd, containerd, shims, namespaces, state."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        dumps = sorted(p.name for p in (self.dir / "tmp").glob("containerd.*.stacks.log"))
        if dumps:  # dockerd killed its containerd for failing its health checks
            self.notes.append(f"containerd stack dumps: {dumps}")
        try:
            if self.dir.is_dir():
                self._script("down", step="down")
        finally:
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)
                self._own_dir = None

    def leftovers(self) -> list[str]:
        """What of this engine is still there (empty after `close`)."""
        left = []
        if Path(f"/run/netns/{self.name}").exists():
            left.append(f"network namespace {self.name}")
        for cg in [
            *Path("/sys/fs/cgroup").glob(f"*/{self.name}"),
            Path("/sys/fs/cgroup") / self.name,
        ]:
            if cg.exists():
                left.append(f"cgroup {cg}")
        for pidfile, marker in (
            ("dockerd.pid", "--pidfile"),
            ("holder.pid", "sleep"),
            ("containerd.pid", "containerd"),
        ):
            pid = _pid_of(self.dir / pidfile, marker)
            if pid is not None:
                left.append(f"process {pid} ({pidfile})")
        for name in ("data", "x", "tmp", "docker.sock"):
            if (self.dir / name).exists():
                left.append(str(self.dir / name))
        return left

    @property
    def client(self) -> Any:
        """docker.DockerClient on the private socket (API version fixed: no probe per client)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, version="1.41", timeout=60)
        return self._client

    def new_client(self, timeout: float | None = 60) -> Any:
        """A client of its own (its own connection pool), e.g. for a thread blocked in a wait."""
        return docker.DockerClient(base_url=self.url, version="1.41", timeout=timeout)

    # --- the engine's process ---------------------------------------------------------------
    def dockerd_pid(self) -> int | None:
        """The pid of the dockerd this engine started (its pidfile, checked by its command line)."""
        return _pid_of(self.dir / "dockerd.pid", f"--pidfile {self.dir / 'dockerd.pid'}")

    def managed_containerd_pid(self) -> int | None:
        return _pid_of(self.dir / "x" / "containerd" / "containerd.pid", str(self.dir / "x"))

    def own_containerd_pid(self) -> int | None:
        """The containerd of `own_containerd=True` (it outlives dockerd)."""
        return _pid_of(self.dir / "containerd.pid", f"--config {self.dir / 'containerd.toml'}")

    def signal(self, sig: int) -> int:
        """Send `sig` to its dockerd, without waiting; returns the pid."""
        pid = self.dockerd_pid()
        if pid is None:
            raise RuntimeError(f"no dockerd of {self.dir} runs")
        self._containerd = self.managed_containerd_pid()  # it goes with dockerd
        _log_line(
            self.log, f"SIG {signal.Signals(sig).name} to {pid} (tests/helpers/private_engine.py)"
        )
        os.kill(pid, sig)
        return pid

    def wait_exit(self, pid: int, timeout_s: float = 90) -> float:
        """Wait for the dockerd `pid` to exit, and for the containerd it started (dead a few ms
        after a SIGKILL of dockerd: a dockerd started before would take the dying one over and
        fail); returns the seconds waited."""
        t0 = time.monotonic()
        for p in (pid, self._containerd):
            while p is not None and alive(p):
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(f"{p} (dockerd {pid}) still runs after {timeout_s} s")
                time.sleep(0.005)
        if self._containerd is not None:
            # dead, maybe a zombie not reaped yet: dockerd's "still running" check (kill 0) would
            # take it for a live containerd and wait for it in vain
            (self.dir / "x" / "containerd" / "containerd.pid").unlink(missing_ok=True)
            self._containerd = None
        return time.monotonic() - t0

    def sigterm(self, wait: bool = True) -> int:
        """SIGTERM to its dockerd (as `systemctl stop docker`, a package upgrade) and, by default,
        wait for it to exit. Returns the pid."""
        pid = self.signal(signal.SIGTERM)
        if wait:
            self.timings["sigterm"] = self.wait_exit(pid)
        return pid

    def sigkill(self, wait: bool = True) -> int:
        pid = self.signal(signal.SIGKILL)
        if wait:
            self.timings["sigkill"] = self.wait_exit(pid)
        return pid

    def start(self, live_restore: bool | None = None) -> None:
        """Start its dockerd again (after sigterm/sigkill); `live_restore` None keeps the mode."""
        if live_restore is not None:
            self.live_restore = live_restore
        self._script(
            "start", "--live-restore" if self.live_restore else "--no-live-restore", step="start"
        )

    def restart(self, live_restore: bool | None = None) -> None:
        """As `systemctl restart docker`: SIGTERM, wait for the exit, start."""
        self.sigterm()
        self.start(live_restore)

    def api_up(self) -> bool:
        try:
            self.new_client(timeout=2).ping()
        except (docker.errors.DockerException, requests.RequestException):
            return False
        return True

    # --- images -----------------------------------------------------------------------------
    def load_image(self, name: str) -> None:
        """Copy an image from the system engine (docker save | docker load)."""
        t0 = time.monotonic()
        source = system_client()
        try:
            data = source.api.get_image(name)  # a stream of the tar
            self.client.api.load_image(data)
        finally:
            source.close()
        self.timings["load_image"] = time.monotonic() - t0

    # --- helpers ----------------------------------------------------------------------------
    def _script(self, command: str, *flags: str, step: str) -> None:
        t0 = time.monotonic()
        done = subprocess.run(
            [str(SCRIPT), command, str(self.dir), *flags],
            capture_output=True,
            text=True,
            timeout=self.start_timeout_s + 60,
            check=False,
        )
        self.timings[step] = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(
                f"private-engine.sh {command} {self.dir} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )


def proc_state(pid: int) -> str:
    """The one-letter state of `pid` in /proc/<pid>/stat (`R`, `S`, `Z`, ...); OSError when gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """`pid` still runs: it exists and is not a zombie left by its last thread."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child of ours that has exited) is no longer the engine, but only once it is the
    # last of its threads: when a SIGKILL takes a multi-threaded dockerd down, its first thread can
    # be a zombie while others still exit and hold its files open (the API socket: a connection
    # then is reset, not refused). "Threads" drops after each thread's files are let go.
    with contextlib.suppress(OSError):
        if proc_state(pid) == "Z":
            status = Path(f"/proc/{pid}/status").read_text()
            return int(status.split("\nThreads:", 1)[1].split()[0]) > 1
    return True


def _pid_of(pidfile: Path, marker: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return pid if marker in cmdline and alive(pid) else None


def _log_line(log: Path, text: str) -> None:
    with contextlib.suppress(OSError), log.open("a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {text}\n")
