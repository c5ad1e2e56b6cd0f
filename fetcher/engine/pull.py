"""The job's image, by the pull policy (IMAGE_PULL_POLICY): present it is used, else pulled.

`auto` is Kubernetes' default: a `:latest` or untagged image is pulled every time (the user-facing
API's applications use `decode:latest`: a box must not run a stale one for ever), an image by tag
or digest only when it is not present.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker.errors
from docker.utils import parse_repository_tag

from fetcher.cancel import Cancel
from fetcher.engine.errors import ENGINE_ERRORS, docker_message, engine_error
from fetcher.errors import ContainerError, Interrupted, Reason
from fetcher.settings import PullPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


def effective_policy(image: str, policy: PullPolicy) -> PullPolicy:
    """`auto` made concrete for `image`: `always` for `:latest` or untagged, else `if-not-present`."""
    if policy != "auto":
        return policy
    if "@" in image:
        return "if-not-present"
    _repo, tag = parse_repository_tag(image)
    return "always" if tag in (None, "", "latest") else "if-not-present"


def until_cancelled(cancel: Cancel, work: Callable[[], T], what: str) -> T:
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
    return box["value"]  # type: ignore[no-any-return]


def is_present(client: Any, image: str) -> bool:
    """Whether the engine has `image`. Raises ContainerError (the engine refuses the reference),
    WorkerTrouble (the engine does not answer)."""
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    except ENGINE_ERRORS as exc:
        raise engine_error(exc, "pull", f"image {image}: {docker_message(exc)}") from None


def pull(client: Any, image: str) -> None:
    """Pull `image` (by digest, or by its tag, `latest` when it names none). Raises the engine's
    errors."""
    if "@" in image:
        client.images.pull(image)
    else:
        repo, tag = parse_repository_tag(image)
        client.images.pull(repo, tag=tag or "latest")


def ensure_image(
    client: Any, image: str, policy: PullPolicy, job_id: str, cancel: Cancel | None = None
) -> None:
    """Apply the pull policy. Raises ContainerError (reason `image`: the job's), WorkerTrouble
    (the engine or the registry failed: this box's), Interrupted."""
    policy = effective_policy(image, policy)
    if policy != "always":
        if is_present(client, image):
            return
        if policy == "never":
            raise ContainerError(
                f"image {image} is not present and IMAGE_PULL_POLICY is never", reason=Reason.image
            )
    log.info("job %s: pulling %s", job_id, image)
    try:
        until_cancelled(cancel or Cancel(), lambda: pull(client, image), f"pull-{job_id}")
    except ENGINE_ERRORS as exc:
        raise engine_error(exc, "pull", f"pull of {image} failed: {docker_message(exc)}") from None


def image_env(client: Any, image: str) -> list[str]:
    """The image's environment (`Config.Env`: `KEY=VALUE` strings). Raises ContainerError,
    WorkerTrouble."""
    try:
        attrs = client.images.get(image).attrs
    except ENGINE_ERRORS as exc:
        raise engine_error(exc, "pull", f"image {image}: {docker_message(exc)}") from None
    env = (attrs.get("Config") or {}).get("Env") or []
    return [str(e) for e in env]
