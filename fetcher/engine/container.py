"""One job's container, through the Docker SDK: create (mounts, GPUs, limits, labels), start,
wait, stop, remove; and the labels by which the fetcher finds its containers again.

The job is code from a stranger: its container gets a process limit (a fork bomb stays inside),
bounded engine-side logs (a job printing 100 GB cannot fill the host's disk through Docker's
json-file log), no privileges, `no-new-privileges`, and without MKNOD (no device nodes in its
directory) and NET_RAW by default. Its output is followed from the attach socket, opened before
the container starts (see `fetcher.engine.output`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
from docker.types import DeviceRequest, LogConfig
from docker.utils.socket import frames_iter

from fetcher.cancel import Cancel
from fetcher.engine.errors import ENGINE_ERRORS, docker_message, engine_error
from fetcher.engine.health import (
    ENGINE_STOPPED,
    EngineHealth,
    ended_while_away,
    parse_docker_time,
)
from fetcher.engine.output import LogFollower, hang_up
from fetcher.engine.pull import ensure_image
from fetcher.errors import Interrupted, WorkerTrouble
from fetcher.job.workspace import CONTAINER_MOUNT, Workspace
from fetcher.models import JobSpecs
from fetcher.settings import PullPolicy

log = logging.getLogger(__name__)

LABEL = "org.decode-opencloud.fetcher"  # every container the fetcher makes carries it
LABEL_ID = LABEL + ".id"  # which fetcher (PATH_BASE) made it
LABEL_JOB = LABEL + ".job"  # the queue id
LABEL_GPUS = LABEL + ".gpus"  # the GPU UUIDs given to it


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
    gpu_line: str | None = None  # what it did with its GPU (fetcher.gpu.usage)

    @property
    def exited(self) -> bool:
        """The engine said it ended (False: it may still run, holding its GPU)."""
        return self.exit_code is not None

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
        """How the job ended (always the first line), then the log's tail and its GPU figures."""
        lines = [self.first_line(), self.log_tail, self.gpu_line or ""]
        return "\n".join(line for line in lines if line)


def gpu_device_request(gpu_uuids: list[str]) -> DeviceRequest:
    """The device request of a job given these GPUs (what `docker run --gpus device=...` sends)."""
    return DeviceRequest(driver="nvidia", device_ids=list(gpu_uuids), capabilities=[["gpu"]])


def shell_command(spec: JobSpecs) -> list[str] | None:
    """`app.cmd` joined with spaces, run by `/bin/sh -c` (it holds `$(...)`, `&&`, globs); None: image CMD."""
    if not spec.app.cmd:
        return None
    return ["/bin/sh", "-c", " ".join(spec.app.cmd)]


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
    engine: EngineHealth | None = None  # shared by every job: the log says once it went away
    name: str = field(init=False)
    _output: Any = field(default=None, init=False, repr=False)  # attached before the start
    _ended: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _gpus: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"decode-job-{self.job_id}-{self.fetcher_id}"
        if self.engine is None:
            self.engine = EngineHealth(self.client)

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
        self.create(spec, ws, gpu_uuids, limits, cancel=cancel, created=created)
        self.run()

    def create(
        self,
        spec: JobSpecs,
        ws: Workspace,
        gpu_uuids: list[str],
        limits: Limits,
        *,
        cancel: Cancel | None = None,
        created: Callable[[str], None] | None = None,
    ) -> None:
        """Create the container and attach to its output (a job staged ahead does this while it
        waits for its GPU: only `run` is left for the moment the GPU is free). Raises as `start`."""
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
            message = f"container could not be created: {docker_message(exc)}"
            raise engine_error(exc, "create", message) from None
        if created is not None:
            created(self.container.id)
        self._output = self._attach()  # before it starts: nothing is missed
        self._gpus = list(gpu_uuids)

    def run(self) -> None:
        """Start the container `create` made. Raises as `start`."""
        try:
            self.container.start()
        except ENGINE_ERRORS as exc:
            self._drop_output()
            message = f"container could not be started: {docker_message(exc)}"
            raise engine_error(exc, "start", message) from None
        log.info(
            "job %s: container %s started (%s)",
            self.job_id,
            self.container.short_id,
            f"GPUs {','.join(self._gpus)}" if self._gpus else "no GPU",
        )

    def pull(self, image: str, cancel: Cancel | None = None) -> None:
        """The job's image, per the pull policy. Raises ContainerError, WorkerTrouble, Interrupted."""
        ensure_image(self.client, image, self.options.pull_policy, self.job_id, cancel)

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
            kwargs["device_requests"] = [gpu_device_request(gpu_uuids)]
        else:
            # CUDA images carry NVIDIA_VISIBLE_DEVICES=all: on a box whose default runtime is
            # nvidia, a container without a device request would get every GPU, those of other
            # jobs and quarantined ones included; `void` gives it none (the job's env cannot undo it)
            kwargs["environment"]["NVIDIA_VISIBLE_DEVICES"] = "void"
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
        self.follower = LogFollower(
            self.job_id,
            self._output_chunks(sock),
            dest,
            self.options.log_max_bytes,
            self.options.log_tail_bytes,
            hang_up=lambda: hang_up(sock),
        ).start()
        self._output = None  # the follower hangs it up from now on (`remove` did until here)

    def _output_chunks(self, sock: Any) -> Iterator[bytes]:
        """The job's output: from the attach socket (or, adopted, the engine's log), then, when
        that stream ends before the container does (an engine restart with live-restore breaks
        it, not the job), the rest from the engine's log since the moment it ended."""
        try:
            if sock is not None:
                yield from (data for _kind, data in frames_iter(sock, tty=False))
            else:
                yield from self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
        except ENGINE_ERRORS as exc:
            log.warning("job %s: the container's output stream broke (%s)", self.job_id, exc)
        yield from self._output_after(time.time())

    def _output_after(self, since: float) -> Iterator[bytes]:
        """What the job wrote after `since` (the stream broke then), until it ends."""
        while True:
            try:
                self.container.reload()
                state = self.container.attrs.get("State", {})
            except docker.errors.NotFound:  # removed (by someone else): nothing more to follow
                return
            except ENGINE_ERRORS:
                if self._ended.wait(1.0):  # the job is over and the engine still away
                    return
                continue
            if state.get("Running"):
                log.info("job %s: following its output again, from the engine's log", self.job_id)
                rest = self.container.logs(stream=True, follow=True, since=since)
            else:
                end = parse_docker_time(str(state.get("FinishedAt") or ""))
                if end is None or end <= since + 0.5:
                    return
                rest = self.container.logs(stream=False, since=since)
                rest = [rest] if isinstance(rest, bytes) else rest
            with contextlib.suppress(*ENGINE_ERRORS):
                yield from rest
            since = time.time()
            if not state.get("Running"):
                return

    def _drop_output(self) -> None:
        hang_up(self._output)
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
        first, or the time limit passes, stop it. Raises WorkerTrouble (container gone, or
        stopped by the engine's own restart)."""
        wake = threading.Event()  # the container ended, or the job was cancelled
        finished = threading.Event()  # the container ended
        box: dict[str, Any] = {}
        cancel.subscribe(wake)
        threading.Thread(
            target=self._waiter,
            args=(cancel, box, finished, wake),
            name=f"wait-{self.job_id}",
            daemon=True,
        ).start()
        stopped_by = None
        if not wake.wait(time_limit_s):  # neither ended nor cancelled within the limit
            stopped_by = f"stopped: the local time limit of {time_limit_s:.0f} s was reached"
        elif not finished.is_set():
            stopped_by = cancel.reason or "cancelled"
        if stopped_by is not None:
            self.stop()
            finished.wait(self.options.stop_grace_s + 30)
        if box.get("gone"):
            self._ended.set()
            raise WorkerTrouble("the container disappeared (removed by someone else)")
        if "status" in box and stopped_by is None:
            self._raise_if_the_engine_stopped_it(box)
        self._ended.set()
        if self.follower is not None:
            self.follower.join(30)
        tail = self.follower.tail() if self.follower is not None else ""
        code = int(box["status"].get("StatusCode", -1)) if "status" in box else None
        return RunResult(code, self.oom_killed(), tail, stopped_by)

    def _waiter(
        self,
        cancel: Cancel,
        box: dict[str, Any],
        finished: threading.Event,
        wake: threading.Event,
    ) -> None:
        """The engine's blocking wait, in a thread of its own: again while the engine does not
        answer (a restart), noting since when (`lost_at`)."""
        engine = self.engine
        assert engine is not None
        pause = 0.5
        while True:
            began = time.time()
            try:
                box["status"] = self.container.wait()
                if "lost_at" in box:  # answered again: an engine stop came before this
                    box["back_at"] = began
                break
            except docker.errors.NotFound:
                box["gone"] = True
                break
            except ENGINE_ERRORS as exc:
                box.setdefault("lost_at", engine.lost(exc))
                if cancel.event.wait(pause):
                    break
                pause = min(pause * 2, 30)
        if "status" in box and "lost_at" in box:
            engine.back()
        finished.set()
        wake.set()

    def _raise_if_the_engine_stopped_it(self, box: dict[str, Any]) -> None:
        """A container that ended with the engine's own stop (a restart without live-restore)
        did not end for the job's reasons: WorkerTrouble (not this box's lasting trouble)."""
        engine = self.engine
        assert engine is not None
        code = box["status"].get("StatusCode")
        if not engine.alive():  # going away now: its stop is what ended the container
            engine.lost("its API is gone as a container ends")
        else:  # the wait broke: did the container end while the engine was away?
            lost_at, back_at = box.get("lost_at"), box.get("back_at")
            if lost_at is None or back_at is None or engine.live_restore():
                return
            if not ended_while_away(self.container, lost_at, back_at):
                return  # it ran on after the engine answered again, and ended on its own
        self._ended.set()
        raise WorkerTrouble(ENGINE_STOPPED.format(code=code), lasting=False)

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

    def remove(self) -> bool:
        """Remove the container in any state (also `created` after a failed start, found by its
        name). True when it is gone (or there never was one). Never raises."""
        self._drop_output()  # attached but never followed (a failure right after the start)
        target = self.container.id if self.container is not None else self.name
        failure = remove_container(self.client, target)
        engine = self.engine
        assert engine is not None
        if failure is None:
            engine.back()
            return True
        self.left_behind = target
        if not engine.alive():  # a restart: expected, said once (EngineHealth)
            engine.lost(failure)
            log.info(
                "job %s: its container %s goes once the engine is back", self.job_id, target[:12]
            )
        else:
            log.error(
                "job %s: could not remove container %s: %s", self.job_id, target[:12], failure
            )
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


def leftover_containers(client: Any, fetcher_id: str) -> list[Any]:
    """Containers of this fetcher from an earlier life (any state)."""
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_ID}={fetcher_id}"}))
