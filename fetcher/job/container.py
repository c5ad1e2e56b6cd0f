"""The job's container, through the Docker SDK: image policy, mounts, GPUs, limits, wait, logs, stop, remove.

The job is code from a stranger: its container gets a process limit (a fork bomb stays inside),
bounded engine-side logs (a job printing 100 GB cannot fill the host's disk through Docker's
json-file log), no privileges, `no-new-privileges`, and without MKNOD (no device nodes in its
directory) and NET_RAW by default. Its output is streamed, while it runs, to a log file in the
fetcher's state directory, where the job cannot place anything.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, LogConfig
from docker.utils import parse_repository_tag
from docker.utils.socket import frames_iter

from fetcher.errors import ContainerError, Interrupted, WorkerTrouble
from fetcher.job.keepalive import Cancel
from fetcher.job.workspace import CONTAINER_MOUNT, Workspace
from fetcher.models import JobSpecs
from fetcher.settings import PullPolicy

log = logging.getLogger(__name__)

LABEL = "org.decode-opencloud.fetcher"  # every container the fetcher makes carries it
LABEL_ID = LABEL + ".id"  # which fetcher (PATH_BASE) made it
LABEL_JOB = LABEL + ".job"  # the queue id
LABEL_GPUS = LABEL + ".gpus"  # the GPU UUIDs given to it
# start failures that are this box's trouble, not the job's: the job is handed back
WORKER_FAULTS = ("could not select device driver", "nvidia-container", "error mounting", "cgroup")
# ... unless the image is what the mount failed on: /files is a file in it (the job directory,
# checked a real directory, cannot be the odd one out). Checked first: the job's error.
JOB_FAULTS = ("mount a directory onto a file", 'to rootfs at "/files": not a directory')
ENGINE_ERRORS = (docker.errors.APIError, requests.RequestException)
# pull failures that another worker (or this one, later) would not see: rate limits, the registry's
# own 5xx. A missing image or tag, a refused login, a bad reference stay the job's error.
REGISTRY_BUSY = (
    "toomanyrequests",
    "too many requests",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
)
PURGE_TIMEOUT_S = 60  # how long the container that empties a job directory may take


@dataclass(frozen=True)
class ContainerOptions:
    pull_policy: PullPolicy = "auto"
    shm_size: str = "8g"
    ipc_host: bool = False
    enforce_limits: bool = True
    stop_grace_s: float = 10.0
    log_tail_bytes: int = 4000
    pids_limit: int = 4096  # 0: no limit
    engine_log_max_mb: int = 20
    cap_drop: tuple[str, ...] = ("MKNOD", "NET_RAW")
    network: str | None = None
    log_max_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    cpu_cores: int | None = None
    memory_mb: int | None = None


@dataclass
class RunResult:
    exit_code: int | None  # None: it never ended on its own (stopped)
    oom_killed: bool = False
    log_tail: str = ""
    ended_by: str | None = None  # why the fetcher stopped it, if it did

    def first_line(self) -> str:
        if self.exit_code is None:
            return self.ended_by or "stopped by the fetcher"
        text = f"exit_code: {self.exit_code}"
        if self.oom_killed:
            text += " (killed: out of memory)"
        if self.ended_by:
            text += f" ({self.ended_by})"
        return text

    def describe(self) -> str:
        """How the job ended (always the first line), then the log's tail."""
        first = self.first_line()
        return f"{first}\n{self.log_tail}" if self.log_tail else first


def docker_message(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


def shell_command(spec: JobSpecs) -> list[str] | None:
    """`app.cmd` joined with spaces, run by `/bin/sh -c` (it holds `$(...)`, `&&`, globs); None: image CMD."""
    if not spec.app.cmd:
        return None
    return ["/bin/sh", "-c", " ".join(spec.app.cmd)]


def _until(cancel: Cancel, work: Callable[[], Any], what: str) -> Any:
    """Run `work` in a helper thread and wait for it or for `cancel`, whichever comes first (a
    cancelled pull goes on in the engine; nothing is left behind by it)."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    cancel.subscribe(done)
    threading.Thread(target=run, name=what, daemon=True).start()
    done.wait()
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise Interrupted(f"{what}: {cancel.reason or 'cancelled'}")
    return box["value"]


def effective_policy(image: str, policy: PullPolicy) -> PullPolicy:
    """`auto` as Kubernetes' default: a `:latest` or untagged image is pulled every time (the
    user-facing API's applications use `decode:latest`: a box must not run a stale one for ever),
    an image by tag or digest only when it is not present."""
    if policy != "auto":
        return policy
    if "@" in image:
        return "if-not-present"
    _repo, tag = parse_repository_tag(image)
    return "always" if tag in (None, "", "latest") else "if-not-present"


def ensure_image(
    client: Any, image: str, policy: PullPolicy, job_id: str, cancel: Cancel | None = None
) -> None:
    """Apply the pull policy. Raises ContainerError with docker's message, Interrupted."""
    repo, tag = parse_repository_tag(image)
    policy = effective_policy(image, policy)
    if policy != "always":
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if policy == "never":
                raise ContainerError(
                    f"image {image} is not present and IMAGE_PULL_POLICY is never"
                ) from None
        except docker.errors.APIError as exc:
            raise ContainerError(f"image {image}: {docker_message(exc)}") from None
        except requests.RequestException as exc:
            raise WorkerTrouble(f"docker engine unreachable: {exc}") from None
    log.info("job %s: pulling %s", job_id, image)

    def pull() -> None:
        if "@" in image:
            client.images.pull(image)
        else:
            client.images.pull(repo, tag=tag or "latest")

    try:
        _until(cancel or Cancel(), pull, f"pull-{job_id}")
    except docker.errors.APIError as exc:
        message = f"pull of {image} failed: {docker_message(exc)}"
        if any(marker in docker_message(exc).lower() for marker in REGISTRY_BUSY):
            raise WorkerTrouble(message) from None  # this box's turn at the registry, not the job
        raise ContainerError(message) from None
    except requests.RequestException as exc:
        raise WorkerTrouble(f"docker engine unreachable during the pull: {exc}") from None


def _hang_up(sock: Any) -> None:
    """Close an attach socket for good (the object docker-py hands out may wrap the socket)."""
    if sock is None:
        return
    for s in (getattr(sock, "_sock", None), sock):
        if s is None:
            continue
        with contextlib.suppress(Exception):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            s.close()


class LogFollower:
    """Streams the container's stdout and stderr, while it runs, into a file (up to a cap) and
    keeps the decoded tail for the final status.

    The stream is the container's attach stream, opened before it starts: every byte the job
    writes comes through it (the engine's own log is bounded and rotates: a follower of it that
    lags loses output; 30 MB printed at once came through as 6 MB). An attached client slows a
    writer that outruns it, so one thread only reads (the tail, and a bounded buffer) and hangs
    the stream up when it stops, and another writes the file: a slow or hung disk drops output
    (counted in the file), it never holds the job."""

    BUFFER_BYTES = 16 * 1024 * 1024  # read but not yet written

    def __init__(
        self,
        job_id: str,
        chunks: Iterable[bytes],
        dest: Path | None,
        max_bytes: int,
        tail_bytes: int,
        hang_up: Callable[[], None] = lambda: None,
    ) -> None:
        self.job_id = job_id
        self.chunks = chunks
        self.hang_up = hang_up  # closes the stream for good
        self.dest = dest
        self.max_bytes = max_bytes
        self.tail_bytes = tail_bytes
        self.written = 0
        self.dropped = 0  # past JOB_LOG_MAX_MB
        self.lost = 0  # the disk was slower than the job, or failed
        self._tail: deque[bytes] = deque()
        self._kept = 0
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._read_all = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="logs-read", daemon=True)
        self._writer = threading.Thread(target=self._write, name="logs-write", daemon=True)

    def start(self) -> LogFollower:
        self._writer.start()
        self._reader.start()
        return self

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._reader.join(timeout_s)
        self._writer.join(max(deadline - time.monotonic(), 0))

    def _read(self) -> None:
        try:
            for chunk in self.chunks:
                self._keep(chunk)
                with self._cond:
                    if self._buffered + len(chunk) > self.BUFFER_BYTES:
                        self.lost += len(chunk)
                        continue
                    self._buffer.append(chunk)
                    self._buffered += len(chunk)
                    self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the job goes on
            log.warning("job %s: could not read the container's output: %s", self.job_id, exc)
        finally:
            # an attach connection nobody reads would hold the job's writes: it is closed for good
            self.hang_up()
            with self._cond:
                self._read_all = True
                self._cond.notify()

    def _next(self) -> bytes | None:
        with self._cond:
            while not self._buffer and not self._read_all:
                self._cond.wait()
            if not self._buffer:
                return None
            chunk = self._buffer.popleft()
            self._buffered -= len(chunk)
            return chunk

    def _write(self) -> None:
        out: BinaryIO | None = None
        try:
            out = self._open()
            while (chunk := self._next()) is not None:
                if out is None:
                    continue
                room = self.max_bytes - self.written
                try:
                    if room > 0:
                        out.write(chunk[:room])
                        self.written += min(len(chunk), room)
                except OSError as exc:
                    log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
                    self.lost += len(chunk)
                    self._close(out)
                    out = None
                    continue
                self.dropped += max(len(chunk) - max(room, 0), 0)
        except Exception as exc:  # noqa: BLE001 - the reader goes on regardless
            log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
        finally:
            if out is not None:
                self._close(out)

    def _open(self) -> BinaryIO | None:
        if self.dest is None:
            return None
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.dest.unlink(missing_ok=True)
            return self.dest.open("xb")
        except OSError as exc:
            log.warning("job %s: cannot keep the job's output: %s", self.job_id, exc)
            return None

    def _close(self, out: BinaryIO) -> None:
        with contextlib.suppress(OSError):
            if self.dropped:
                out.write(
                    f"\n[fetcher: {self.dropped} more bytes of output not kept (JOB_LOG_MAX_MB)]\n".encode()
                )
            if self.lost:
                out.write(
                    f"\n[fetcher: {self.lost} bytes of output lost: they came faster than the"
                    " disk took them, or the disk failed]\n".encode()
                )
            out.close()

    def _keep(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._kept += len(chunk)
        while len(self._tail) > 1 and self._kept - len(self._tail[0]) >= self.tail_bytes:
            self._kept -= len(self._tail.popleft())

    def tail(self) -> str:
        data = b"".join(self._tail)[-self.tail_bytes :]
        return data.decode("utf-8", errors="replace").strip()


@dataclass
class JobContainer:
    """One job's container: create/start or attach, wait, logs, stop, remove. Usable on its own."""

    client: Any
    job_id: str
    fetcher_id: str
    options: ContainerOptions
    container: Any = None
    follower: LogFollower | None = None
    left_behind: str | None = None  # the id of a container `remove` could not remove
    name: str = field(init=False)
    _output: Any = field(default=None, init=False, repr=False)  # attached before the start

    def __post_init__(self) -> None:
        self.name = f"decode-job-{self.job_id}-{self.fetcher_id}"

    def start(
        self,
        spec: JobSpecs,
        ws: Workspace,
        gpu_uuids: list[str],
        limits: Limits,
        *,
        cancel: Cancel | None = None,
        created: Callable[[str], None] | None = None,
    ) -> None:
        """Create and start the container (its image present: see `pull`); `created` is told its
        id before it starts. Raises ContainerError (the job's: image, command), WorkerTrouble
        (this box's: engine, GPU runtime, mount), Interrupted."""
        cancel = cancel or Cancel()
        if cancel.is_set():
            raise Interrupted(cancel.reason or "cancelled")
        try:
            ws.check_mountable()
        except OSError as exc:
            raise WorkerTrouble(f"job directory cannot be mounted: {exc}") from None
        kwargs = self._create_args(spec, ws, gpu_uuids, limits)
        self._remove_stale()
        try:
            self.container = self.client.containers.create(spec.handler.image_url, **kwargs)
        except ENGINE_ERRORS as exc:
            raise self._start_error("created", exc) from None
        if created is not None:
            created(self.container.id)
        self._output = self._attach()  # before it starts: nothing is missed
        try:
            self.container.start()
        except ENGINE_ERRORS as exc:
            self._drop_output()
            raise self._start_error("started", exc) from None
        log.info(
            "job %s: container %s started (%s)",
            self.job_id,
            self.container.short_id,
            f"GPUs {','.join(gpu_uuids)}" if gpu_uuids else "no GPU",
        )

    def pull(self, image: str, cancel: Cancel | None = None) -> None:
        """The job's image, per the pull policy. Raises ContainerError, WorkerTrouble, Interrupted."""
        ensure_image(self.client, image, self.options.pull_policy, self.job_id, cancel)

    def _start_error(self, verb: str, exc: Exception) -> Exception:
        """What an engine error while the container is created or started means: an engine out of
        reach or a fault of this box is WorkerTrouble, anything else the job's ContainerError."""
        if not isinstance(exc, docker.errors.APIError):
            return WorkerTrouble(f"docker engine unreachable: {exc}")
        message = f"container could not be {verb}: {docker_message(exc)}"
        if any(marker in message for marker in JOB_FAULTS) or (
            'to rootfs at "/files"' in message and "not a directory" in message
        ):
            return ContainerError(message)
        if any(marker in message for marker in WORKER_FAULTS):
            return WorkerTrouble(message)
        return ContainerError(message)

    def _create_args(
        self, spec: JobSpecs, ws: Workspace, gpu_uuids: list[str], limits: Limits
    ) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = {
            "command": shell_command(spec),
            "environment": dict(spec.app.env or {}),
            "volumes": {str(ws.host_path): {"bind": CONTAINER_MOUNT, "mode": "rw"}},
            "labels": {
                LABEL: "1",
                LABEL_ID: self.fetcher_id,
                LABEL_JOB: self.job_id,
                LABEL_GPUS: ",".join(gpu_uuids),
            },
            "name": self.name,
            "detach": True,
            "init": True,  # signals reach the job's process, and zombies are reaped
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "cap_drop": list(o.cap_drop),
            "log_config": LogConfig(
                type="json-file", config={"max-size": f"{o.engine_log_max_mb}m", "max-file": "1"}
            ),
        }
        if o.pids_limit > 0:
            kwargs["pids_limit"] = o.pids_limit
        if o.network:
            kwargs["network_mode"] = o.network
        if o.ipc_host:
            kwargs["ipc_mode"] = "host"
        else:
            kwargs["shm_size"] = o.shm_size
        if gpu_uuids:
            kwargs["device_requests"] = [
                DeviceRequest(driver="nvidia", device_ids=gpu_uuids, capabilities=[["gpu"]])
            ]
        if o.enforce_limits:
            if limits.cpu_cores:
                kwargs["nano_cpus"] = int(limits.cpu_cores * 1e9)
            if limits.memory_mb:
                kwargs["mem_limit"] = f"{limits.memory_mb}m"
        return kwargs

    def attach(self, container_id: str) -> None:
        """Take over a container an earlier life of this fetcher started. Raises ContainerError."""
        try:
            self.container = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            raise WorkerTrouble(f"container {container_id[:12]} is gone") from None
        except ENGINE_ERRORS as exc:
            raise WorkerTrouble(f"docker engine: {exc}") from None
        if self.container.status == "created":  # never started: its wait would answer exit 0
            raise WorkerTrouble(f"container {container_id[:12]} was never started")

    def follow_logs(self, dest: Path | None) -> None:
        """Keep the job's output (in `dest`, and its tail) from here on: through the attach socket
        opened before the start; for a container adopted after a restart (maybe ended already),
        from the engine's log."""
        sock = self._output
        chunks: Iterable[bytes]
        if sock is not None:
            chunks = (data for _kind, data in frames_iter(sock, tty=False))
        else:
            try:
                chunks = self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
            except ENGINE_ERRORS as exc:
                log.warning("job %s: cannot read the container's output: %s", self.job_id, exc)
                chunks = ()
        self.follower = LogFollower(
            self.job_id,
            chunks,
            dest,
            self.options.log_max_bytes,
            self.options.log_tail_bytes,
            hang_up=lambda: _hang_up(sock),
        ).start()
        self._output = None  # the follower hangs it up from now on (`remove` did until here)

    def _drop_output(self) -> None:
        _hang_up(self._output)
        self._output = None

    def _attach(self) -> Any:
        """The container's attach socket (stdout and stderr, multiplexed), or None."""
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
        try:
            return self.client.api.attach_socket(self.container.id, params=params)
        except ENGINE_ERRORS as exc:
            log.warning("job %s: cannot attach to the container's output: %s", self.job_id, exc)
            return None

    def _ours_by_name(self) -> Any:
        """The container of this job's name if this fetcher made it (an earlier try), else None."""
        try:
            found = self.client.containers.get(self.name)
        except ENGINE_ERRORS:
            return None
        return found if found.labels.get(LABEL_ID) == self.fetcher_id else None

    def _remove_stale(self) -> None:
        old = self._ours_by_name()
        if old is not None:
            with contextlib.suppress(*ENGINE_ERRORS):
                old.remove(force=True)

    def wait(self, cancel: Cancel, time_limit_s: float | None = None) -> RunResult:
        """Wait for the container to end (docker's blocking wait, no polling). If `cancel` is set
        first, or the time limit passes, stop it. Raises WorkerTrouble (container gone)."""
        wake = threading.Event()  # the container ended, or the job was cancelled
        finished = threading.Event()  # the container ended
        box: dict[str, Any] = {}

        def waiter() -> None:
            pause = 0.5
            while True:
                try:
                    box["status"] = self.container.wait()
                    break
                except docker.errors.NotFound:
                    box["gone"] = True
                    break
                except ENGINE_ERRORS as exc:
                    log.warning(
                        "job %s: docker engine did not answer (%s); still waiting", self.job_id, exc
                    )
                    if cancel.event.wait(pause):
                        break
                    pause = min(pause * 2, 30)
            finished.set()
            wake.set()

        cancel.subscribe(wake)
        threading.Thread(target=waiter, name=f"wait-{self.job_id}", daemon=True).start()
        stopped_by = None
        if not wake.wait(time_limit_s):  # neither ended nor cancelled within the limit
            stopped_by = f"stopped: the local time limit of {time_limit_s:.0f} s was reached"
        elif not finished.is_set():
            stopped_by = cancel.reason or "cancelled"
        if stopped_by is not None:
            self.stop()
            finished.wait(self.options.stop_grace_s + 30)
        if box.get("gone"):
            raise WorkerTrouble("the container disappeared (removed by someone else)")
        if self.follower is not None:
            self.follower.join(30)
        tail = self.follower.tail() if self.follower is not None else ""
        code = None
        if "status" in box:
            code = int(box["status"].get("StatusCode", -1))
        return RunResult(code, self.oom_killed(), tail, stopped_by)

    def oom_killed(self) -> bool:
        if self.container is None:
            return False
        with contextlib.suppress(*ENGINE_ERRORS):
            self.container.reload()
        return bool(self.container.attrs.get("State", {}).get("OOMKilled"))

    def exit_state(self) -> tuple[str, int | None]:
        """(status, exit code) of the container as the engine sees it now."""
        self.container.reload()
        state = self.container.attrs.get("State", {})
        code = state.get("ExitCode")
        return str(state.get("Status", "")), None if code is None else int(code)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if self.container is None:
            return
        log.info(
            "job %s: stopping container (grace %.0f s)", self.job_id, self.options.stop_grace_s
        )
        try:
            self.container.stop(timeout=int(max(self.options.stop_grace_s, 0)))
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("job %s: stop failed (%s); killing", self.job_id, exc)
            with contextlib.suppress(*ENGINE_ERRORS):
                self.container.kill()

    def purge(self, ws: Workspace, image: str) -> None:
        """Empty the job directory as root, with the job's own image: the job's processes may have
        written files (as root) that a fetcher running as a plain user cannot delete. Only a real
        directory is ever mounted (the engine would follow a link). Never raises."""
        try:
            ws.check_mountable()
        except OSError as exc:
            log.error("job %s: not emptying %s with a container: %s", self.job_id, ws.path, exc)
            return
        log.info(
            "job %s: removing the job's files with a container (permission denied to the fetcher)",
            self.job_id,
        )
        o = self.options
        kwargs: dict[str, Any] = {
            "entrypoint": purge_command()[:2],
            "network_disabled": True,
            "security_opt": ["no-new-privileges"],
            "cap_drop": list(o.cap_drop),
            "log_config": LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            "volumes": {str(ws.host_path): {"bind": CONTAINER_MOUNT, "mode": "rw"}},
            "labels": {LABEL: "1", LABEL_ID: self.fetcher_id, LABEL_JOB: self.job_id},
        }
        if o.pids_limit > 0:
            kwargs["pids_limit"] = o.pids_limit
        # the job's own image, so the stranger's code: bounded like the job, waited for a while,
        # then removed whatever it does; its output is never read
        purger = None
        try:
            purger = self.client.containers.create(image, purge_command()[2:], **kwargs)
            purger.start()
            purger.wait(timeout=PURGE_TIMEOUT_S)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.error(
                "job %s: could not empty the job directory with a container: %s", self.job_id, exc
            )
        finally:
            if purger is not None:
                with contextlib.suppress(*ENGINE_ERRORS):
                    purger.remove(force=True)

    def remove(self) -> bool:
        """Remove the container in any state (also `created` after a failed start, found by its
        name). True when it is gone (or there never was one). Never raises."""
        self._drop_output()  # attached but never followed (a failure right after the start)
        target = self.container.id if self.container is not None else self.name
        failure = remove_container(self.client, target)
        if failure is None:
            return True
        log.error("job %s: could not remove container %s: %s", self.job_id, target[:12], failure)
        self.left_behind = target
        return False


def remove_container(client: Any, container: str) -> str | None:
    """Remove a container by id or name, whatever its state. None when it is gone (or never was),
    else why not. Never raises."""
    try:
        client.api.remove_container(container, force=True)
    except docker.errors.NotFound:
        return None
    except ENGINE_ERRORS as exc:
        return docker_message(exc)
    return None


def purge_command() -> list[str]:
    return [
        "/bin/sh",
        "-c",
        f"rm -rf {CONTAINER_MOUNT}/..?* {CONTAINER_MOUNT}/.[!.]* {CONTAINER_MOUNT}/*",
    ]


def leftover_containers(client: Any, fetcher_id: str) -> list[Any]:
    """Containers of this fetcher from an earlier life (any state)."""
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_ID}={fetcher_id}"}))
