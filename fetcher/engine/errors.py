"""What the engine's and registries' error messages mean: the one table (`MARKERS`), read by
`engine_error` for every engine call that can fail a job (the pull, the container's create and start).

A failure that is this box's (no NVIDIA runtime, a mount the host cannot make, a registry's rate
limit or 5xx) is WorkerTrouble: the job is handed back for another worker. Anything else the
engine refuses (a missing image or tag, a bad command, `/files` a file in the image) is the job's
ContainerError. An engine that does not answer at all is this box's trouble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import docker.errors
import requests

from fetcher.errors import ContainerError, FetcherError, Reason, WorkerTrouble

#: the exceptions an engine call raises: the engine answered with an error, or did not answer
ENGINE_ERRORS = (docker.errors.APIError, requests.RequestException)

Action = Literal["pull", "create", "start"]


@dataclass(frozen=True)
class Marker:
    """Engine messages that contain every one of `texts` (case-insensitive) mean `fault`
    (`worker`: this box's; `job`: the job's) for an error during one of `actions`; `gpu`: the
    failure is the GPU's (its runtime), which counts towards the GPU's quarantine."""

    texts: tuple[str, ...]
    actions: tuple[Action, ...]
    worker: bool
    why: str
    gpu: bool = False

    def matches(self, message: str, action: Action) -> bool:
        low = message.lower()
        return action in self.actions and all(t in low for t in self.texts)


START: tuple[Action, ...] = ("create", "start")
PULL: tuple[Action, ...] = ("pull",)
#: first match wins: the job's own faults are listed before the worker's they overlap with
MARKERS = (
    Marker(
        ("mount a directory onto a file",),
        START,
        worker=False,
        why="/files is a file in the job's image",
    ),
    Marker(
        ('to rootfs at "/files"', "not a directory"),
        START,
        worker=False,
        why="/files is a file in the job's image (runc's wording)",
    ),
    Marker(
        ("could not select device driver",),
        START,
        worker=True,
        gpu=True,
        why="the engine has no NVIDIA runtime for the GPU device request",
    ),
    Marker(
        ("nvidia-container",),
        START,
        worker=True,
        gpu=True,
        why="the NVIDIA container runtime failed (driver, CUDA requirement, device)",
    ),
    Marker(("error mounting",), START, worker=True, why="the host could not make a mount"),
    Marker(("cgroup",), START, worker=True, why="the host's cgroups refused the container"),
    Marker(("toomanyrequests",), PULL, worker=True, why="the registry's rate limit"),
    Marker(("too many requests",), PULL, worker=True, why="the registry's rate limit"),
    Marker(("500 internal server error",), PULL, worker=True, why="the registry's 5xx"),
    Marker(("502 bad gateway",), PULL, worker=True, why="the registry's 5xx"),
    Marker(("503 service unavailable",), PULL, worker=True, why="the registry's 5xx"),
    Marker(("504 gateway timeout",), PULL, worker=True, why="the registry's 5xx"),
)


def docker_message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


def marker_for(message: str, action: Action) -> Marker | None:
    return next((m for m in MARKERS if m.matches(message, action)), None)


def engine_error(exc: BaseException, action: Action, message: str) -> FetcherError:
    """What an engine error during `action` means, with `message` (what failed, and the engine's
    words) as its text: WorkerTrouble when the engine did not answer or a marker says it is this
    box's, else the job's ContainerError (reason `image` for a pull)."""
    if not isinstance(exc, docker.errors.APIError):
        during = " during the pull" if action == "pull" else ""
        return WorkerTrouble(f"docker engine unreachable{during}: {exc}")
    marker = marker_for(docker_message(exc), action)
    if marker is not None and marker.worker:
        return WorkerTrouble(message, gpu_related=marker.gpu)
    return ContainerError(message, reason=Reason.image if action == "pull" else Reason.container)
