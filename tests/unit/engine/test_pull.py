"""The job's image: which pull failures are the job's (`error`) and which the registry's
(hand-back), with a fake engine, table-driven (the real engine's own refusals are in the
integration tests); and the `auto` policy's choice."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from fetcher.engine.pull import ensure_image
from fetcher.errors import ContainerError, WorkerTrouble


class FakeImages:
    def __init__(self, pull_error: Exception | None) -> None:
        self.pull_error = pull_error
        self.pulled: list[str] = []

    def get(self, name: str) -> Any:
        raise docker.errors.ImageNotFound(f"No such image: {name}")

    def pull(self, repo: str, tag: str | None = None) -> None:
        self.pulled.append(f"{repo}:{tag}")
        if self.pull_error is not None:
            raise self.pull_error


class FakeClient:
    def __init__(self, pull_error: Exception | None) -> None:
        self.images = FakeImages(pull_error)


def api_error(explanation: str) -> docker.errors.APIError:
    return docker.errors.APIError("500 Server Error", explanation=explanation)


@pytest.mark.parametrize(
    ("explanation", "kind"),
    [
        ("toomanyrequests: You have reached your pull rate limit.", WorkerTrouble),
        ("received unexpected HTTP status: 503 Service Unavailable", WorkerTrouble),
        ("received unexpected HTTP status: 500 Internal Server Error", WorkerTrouble),
        ("manifest for reg/decode:v9 not found: manifest unknown", ContainerError),
        ("pull access denied for reg/decode, repository does not exist", ContainerError),
        ("invalid reference format", ContainerError),
    ],
)
def test_a_pull_failure_is_the_jobs_unless_the_registry_is_busy(
    explanation: str, kind: type[Exception]
) -> None:
    client = FakeClient(api_error(explanation))
    with pytest.raises(kind, match="pull of reg/decode:429 failed"):
        ensure_image(client, "reg/decode:429", "if-not-present", "7")
    assert client.images.pulled == ["reg/decode:429"]


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("public.ecr.aws/w2b7b8c0/decode-cloud/decode:latest", "always"),
        ("decode", "always"),
        ("127.0.0.1:5000/test/job", "always"),
        ("127.0.0.1:5000/test/job:1", "if-not-present"),
        ("public.ecr.aws/w2b7b8c0/decode-cloud/decode:v0_10_1", "if-not-present"),
        ("decode@sha256:" + "a" * 64, "if-not-present"),
        ("decode:latest@sha256:" + "a" * 64, "if-not-present"),
    ],
)
def test_auto_pulls_latest_and_untagged_images_every_time(image: str, policy: str) -> None:
    from fetcher.engine.pull import effective_policy

    assert effective_policy(image, "auto") == policy
    assert effective_policy(image, "never") == "never"
