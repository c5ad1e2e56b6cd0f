"""The job's image on a real engine and the local registry: by IMAGE_PULL_POLICY, with the
engine's or registry's reason when it fails."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tests.helpers import Env, run_until_idle

pytestmark = pytest.mark.docker


def test_missing_image_under_never_is_an_error_with_the_reason(env: Env, engine: Any) -> None:
    job = env.submit(["true"], image="fetcher-test/not-there:1")
    assert run_until_idle(env.settings(image_pull_policy="never"), engine) == 0
    assert job.status.value == "error"
    assert (
        "not present" in job.history[-1]["runtime_details"]
        and "never" in job.history[-1]["runtime_details"]
    )


def test_failed_pull_from_local_registry_is_an_error_with_dockers_message(
    env: Env, engine: Any
) -> None:
    from tests.helpers import REGISTRY_IMAGE

    missing = REGISTRY_IMAGE.rsplit(":", 1)[0] + ":no-such-tag"
    job = env.submit(["true"], image=missing)
    assert run_until_idle(env.settings(image_pull_policy="always"), engine) == 0
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("pull of ") and (
        "manifest unknown" in details or "not found" in details
    ), details


def test_an_image_not_on_the_box_is_pulled_from_its_registry_then_run(
    env: Env, engine: Any
) -> None:
    from tests.helpers import REGISTRY_IMAGE

    with contextlib.suppress(Exception):
        engine.images.remove(REGISTRY_IMAGE)
    job = env.submit(["echo pulled-and-ran"], image=REGISTRY_IMAGE)
    assert run_until_idle(env.settings(image_pull_policy="if-not-present"), engine) == 0
    assert job.status.value == "finished", job.history
    engine.images.get(REGISTRY_IMAGE)


def test_auto_pulls_a_latest_image_again_instead_of_running_a_stale_one(
    env: Env, engine: Any
) -> None:
    """Under IMAGE_PULL_POLICY=auto (the default) a `:latest` image is pulled again for every job,
    as the upstream fetcher always pulls: a box must not keep running the `decode:latest` it pulled
    once, for ever. An image by another tag that is present is not pulled."""
    from tests.helpers import IMAGE, REGISTRY_IMAGE

    latest = REGISTRY_IMAGE.rsplit(":", 1)[0] + ":latest"
    fresh = engine.images.get(IMAGE)
    fresh.tag(latest)
    engine.images.push(latest)
    stale = engine.images.get("fetcher-test/pycopy:3.11")
    stale.tag(latest)  # the box's copy is an older, other image
    try:
        job = env.submit(["echo ran"], image=latest)
        assert run_until_idle(env.settings(), engine) == 0  # IMAGE_PULL_POLICY: auto, the default
        assert job.status.value == "finished", job.history
        assert engine.images.get(latest).id == fresh.id
        # an image by tag (not latest) present on the box is not pulled: IMAGE is in no registry
        local = env.submit(["echo ran"], image=IMAGE)
        assert run_until_idle(env.settings(), engine) == 0
        assert local.status.value == "finished", local.history
    finally:
        with contextlib.suppress(Exception):
            engine.images.remove(latest)
