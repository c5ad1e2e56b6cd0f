"""The exception hierarchy: each failure's reason class (for the job's report and the
metrics), each API failure's outcome class."""

from __future__ import annotations

import pytest

from fetcher.errors import (
    ApiUnavailable,
    AuthError,
    ContainerError,
    Interrupted,
    InvalidJobSpec,
    JobGone,
    Reason,
    TransferError,
    api_label,
    classify,
)
from fetcher.metrics import FAILURE_REASONS


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (InvalidJobSpec("1", "files_down", "absolute path"), "invalid_spec"),
        (TransferError("download failed"), "transfer"),
        (ContainerError("pull access denied", reason=Reason.image), "image"),
        (ContainerError("could not select device driver"), "container"),
        (Interrupted("stop requested"), "worker"),
        (ValueError("a bug"), "worker"),
    ],
)
def test_each_failure_carries_its_reason_class(exc: Exception, reason: str) -> None:
    assert classify(exc)[1] == reason
    assert reason in FAILURE_REASONS


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (ApiUnavailable("down"), "unavailable"),
        (AuthError("no", 401), "auth"),
        (JobGone("gone", 404), "gone"),
        (ValueError("bug"), "error"),
    ],
)
def test_each_api_failure_has_its_outcome_class(exc: Exception | None, outcome: str) -> None:
    assert api_label(exc) == outcome
