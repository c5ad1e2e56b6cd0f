"""Which container failures are the job's (`error`) and which this box's (hand-back): with a fake
engine, table-driven; the real engine's own refusals are in the integration tests."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from fetcher.engine.pull import ensure_image
from fetcher.errors import ContainerError, WorkerTrouble
from fetcher.models import JobSpecs


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


@pytest.mark.parametrize("image", ["img\nINFO job 9: forged line", "img\x1b[2J", "two words", ""])
def test_an_image_reference_with_control_characters_is_an_invalid_spec(image: str) -> None:
    with pytest.raises(ValueError, match="image"):
        JobSpecs.model_validate({"handler": {"image_url": image}})
