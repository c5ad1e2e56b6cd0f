"""The job's container, through the Docker SDK: image policy, mounts, GPUs, limits, wait, logs, stop, remove."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import DeviceRequest
from docker.utils import parse_repository_tag

from fetcher.errors import ContainerError
from fetcher.job.workspace import CONTAINER_MOUNT, Workspace
from fetcher.models import JobSpecs
from fetcher.settings import PullPolicy

log = logging.getLogger(__name__)

LABEL = "org.decode-opencloud.fetcher"  # every container the fetcher makes carries it
LABEL_ID = LABEL + ".id"  # which fetcher (PATH_BASE) made it
LABEL_JOB = LABEL + ".job"  # the queue id
LABEL_GPUS = LABEL + ".gpus"  # the GPU UUIDs given to it
POLL_S = 0.5


@dataclass(frozen=True)
class ContainerOptions:
    pull_policy: PullPolicy = "if-not-present"
    shm_size: str = "8g"
    ipc_host: bool = False
    enforce_limits: bool = True
    stop_grace_s: float = 10.0
    log_tail_bytes: int = 4000


@dataclass(frozen=True)
class Limits:
    cpu_cores: int | None = None
    memory_mb: int | None = None


@dataclass
class RunResult:
    exit_code: int | None  # None: stopped before it ended on its own
    oom_killed: bool
    log_tail: str

    def describe(self) -> str:
        text = f"exit_code: {self.exit_code}"
        if self.oom_killed:
            text += " (killed: out of memory)"
        return f"{text}\n{self.log_tail}" if self.log_tail else text


def docker_message(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


def shell_command(spec: JobSpecs) -> list[str] | None:
    """`app.cmd` joined with spaces, run by `/bin/sh -c` (it holds `$(...)`, `&&`, globs); None: image CMD."""
    if not spec.app.cmd:
        return None
    return ["/bin/sh", "-c", " ".join(spec.app.cmd)]


def ensure_image(client: Any, image: str, policy: PullPolicy, job_id: str) -> None:
    """Apply the pull policy. Raises ContainerError with docker's message."""
    repo, tag = parse_repository_tag(image)
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
    log.info("job %s: pulling %s", job_id, image)
    try:
        if "@" in image:
            client.images.pull(image)
        else:
            client.images.pull(repo, tag=tag or "latest")
    except docker.errors.APIError as exc:
        raise ContainerError(f"pull of {image} failed: {docker_message(exc)}") from None


class JobContainer:
    """One job's container: create/start, wait, logs, stop, remove. Usable on its own."""

    def __init__(
        self, client: Any, job_id: str, fetcher_id: str, options: ContainerOptions
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.fetcher_id = fetcher_id
        self.options = options
        self.container: Any = None
        self.name = f"decode-job-{job_id}-{fetcher_id}"

    def start(self, spec: JobSpecs, ws: Workspace, gpu_uuids: list[str], limits: Limits) -> None:
        """Create and start the container. Raises ContainerError (with docker's message)."""
        ensure_image(self.client, spec.handler.image_url, self.options.pull_policy, self.job_id)
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
        }
        if self.options.ipc_host:
            kwargs["ipc_mode"] = "host"
        else:
            kwargs["shm_size"] = self.options.shm_size
        if gpu_uuids:
            kwargs["device_requests"] = [
                DeviceRequest(driver="nvidia", device_ids=gpu_uuids, capabilities=[["gpu"]])
            ]
        if self.options.enforce_limits:
            if limits.cpu_cores:
                kwargs["nano_cpus"] = int(limits.cpu_cores * 1e9)
            if limits.memory_mb:
                kwargs["mem_limit"] = f"{limits.memory_mb}m"
        self._remove_stale()
        try:
            self.container = self.client.containers.create(spec.handler.image_url, **kwargs)
        except docker.errors.APIError as exc:
            raise ContainerError(f"container could not be created: {docker_message(exc)}") from None
        try:
            self.container.start()
        except docker.errors.APIError as exc:
            raise ContainerError(f"container could not start: {docker_message(exc)}") from None
        log.info(
            "job %s: container %s started (%s)",
            self.job_id,
            self.container.short_id,
            f"GPUs {','.join(gpu_uuids)}" if gpu_uuids else "no GPU",
        )

    def _ours_by_name(self) -> Any:
        """The container of this job's name if this fetcher made it (an earlier try), else None."""
        try:
            found = self.client.containers.get(self.name)
        except (docker.errors.APIError, requests.RequestException):
            return None
        return found if found.labels.get(LABEL_ID) == self.fetcher_id else None

    def _remove_stale(self) -> None:
        old = self._ours_by_name()
        if old is not None:
            old.remove(force=True)

    def wait(self, cancel: threading.Event) -> int | None:
        """Wait for the container to end; if `cancel` is set first, stop it and return None."""
        while True:
            if cancel.wait(POLL_S):
                self.stop()
                return None
            try:
                self.container.reload()
            except docker.errors.NotFound:
                raise ContainerError(
                    "the container disappeared (removed by someone else)"
                ) from None
            except (docker.errors.APIError, requests.RequestException) as exc:
                log.warning(
                    "job %s: docker engine did not answer (%s); still waiting", self.job_id, exc
                )
                continue
            if self.container.status in ("exited", "dead"):
                return int(self.container.attrs["State"]["ExitCode"])

    @property
    def oom_killed(self) -> bool:
        return bool(
            self.container is not None and self.container.attrs.get("State", {}).get("OOMKilled")
        )

    def save_logs(self, dest: Path | None) -> str:
        """Stream the container's stdout+stderr to `dest` (if given); return the decoded tail."""
        if self.container is None:
            return ""
        tail: deque[bytes] = deque()
        kept = 0
        limit = self.options.log_tail_bytes
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
        out = dest.open("wb") if dest is not None else None
        try:
            for chunk in self.container.logs(stream=True, follow=False, stdout=True, stderr=True):
                if out is not None:
                    out.write(chunk)
                tail.append(chunk)
                kept += len(chunk)
                while kept - len(tail[0]) >= limit:
                    kept -= len(tail.popleft())
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("job %s: could not read the container's logs: %s", self.job_id, exc)
        finally:
            if out is not None:
                out.close()
        data = b"".join(tail)[-limit:]
        return data.decode("utf-8", errors="replace").strip()

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
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.warning("job %s: stop failed (%s); killing", self.job_id, exc)
            with contextlib.suppress(docker.errors.APIError):
                self.container.kill()

    def purge(self, ws: Workspace, image: str) -> None:
        """Empty the job directory as root, with the job's own image: the job's processes may have
        written files (as root) that a fetcher running as a plain user cannot delete. Never raises."""
        log.info(
            "job %s: removing the job's files with a container (permission denied to the fetcher)",
            self.job_id,
        )
        try:
            self.client.containers.run(
                image,
                purge_command()[2:],
                entrypoint=purge_command()[:2],
                remove=True,
                network_disabled=True,
                security_opt=["no-new-privileges"],
                volumes={str(ws.host_path): {"bind": CONTAINER_MOUNT, "mode": "rw"}},
                labels={LABEL: "1", LABEL_ID: self.fetcher_id, LABEL_JOB: self.job_id},
            )
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.error(
                "job %s: could not empty the job directory with a container: %s", self.job_id, exc
            )

    def remove(self) -> None:
        """Remove the container in any state (also `created` after a failed start). Never raises."""
        target = self.container if self.container is not None else self._ours_by_name()
        if target is None:
            return
        try:
            target.remove(force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, requests.RequestException) as exc:
            log.error(
                "job %s: could not remove container %s: %s", self.job_id, target.short_id, exc
            )


def purge_command() -> list[str]:
    return [
        "/bin/sh",
        "-c",
        f"rm -rf {CONTAINER_MOUNT}/..?* {CONTAINER_MOUNT}/.[!.]* {CONTAINER_MOUNT}/*",
    ]


def leftover_containers(client: Any, fetcher_id: str) -> list[Any]:
    """Containers of this fetcher from an earlier life (any state)."""
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_ID}={fetcher_id}"}))
