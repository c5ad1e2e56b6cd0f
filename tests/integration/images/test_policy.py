"""Image pruning on the real engine: an old job image goes, one a container uses stays, and
images outside the ledger (the test image, a user's name for a job image) are left alone."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from fetcher.engine.container import LABEL, LABEL_ID
from fetcher.images.policy import DAY_S, prune_images
from tests.helpers import IMAGE, SESSION, fetcher_id

pytestmark = pytest.mark.docker


@pytest.fixture
def made(engine: Any) -> Iterator[dict[str, Any]]:
    """Two images of their own (distinct ids, committed from the test image) and whatever the test
    adds under `containers` / `tags`; all removed afterwards."""
    created: dict[str, Any] = {"containers": [], "tags": []}
    labels = {LABEL: "1", LABEL_ID: fetcher_id("prune")}
    try:
        for name in ("old", "inuse"):
            tag = f"fetcher-test/prune-{name}:{SESSION}"
            base = engine.containers.create(IMAGE, ["true"], labels=labels)
            try:
                image = base.commit(
                    repository=f"fetcher-test/prune-{name}",
                    tag=SESSION,
                    changes=[f"LABEL org.decode-opencloud.fetcher.test={name}-{SESSION}"],
                )
            finally:
                base.remove(force=True)
            created[name] = image.id
            created["tags"].append(tag)
        created["labels"] = labels
        yield created
    finally:
        for container in created["containers"]:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for tag in created["tags"]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(tag, force=True)
        for name in ("old", "inuse"):
            if name in created:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    engine.images.remove(created[name], force=True)


def exists(engine: Any, ref: str) -> bool:
    try:
        engine.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_old_image_is_removed_and_the_one_a_container_uses_is_kept(
    engine: Any, made: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Given two job images, distinct, both last used 30 days ago; a container runs from one
    old, inuse = made["tags"]
    assert made["old"] != made["inuse"]
    container = engine.containers.run(inuse, ["sleep", "60"], detach=True, labels=made["labels"])
    made["containers"].append(container)
    test_image_id = engine.images.get(IMAGE).id
    month_ago = time.time() - 30 * DAY_S
    ledger = {old: month_ago, inuse: month_ago}

    # When pruning with keep_days=7
    gone = prune_images(engine, ledger, keep_days=7, max_total_bytes=None)

    # Then the old one is gone, the one in use and the test image (not ledgered) are not
    assert gone == [old]
    assert not exists(engine, old)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(made["old"])
    assert exists(engine, inuse)
    assert engine.images.get(IMAGE).id == test_image_id
    # (kept because the fetcher saw the container, not because the engine refused)
    assert "refused" not in caplog.text

    # And an exited container protects its image as well as a running one
    container.stop(timeout=0)
    container.reload()
    assert container.status == "exited"
    assert prune_images(engine, {inuse: month_ago}, keep_days=7, max_total_bytes=None) == []
    assert exists(engine, inuse)
    assert "refused" not in caplog.text


def test_a_job_image_the_user_also_named_keeps_that_name(engine: Any, made: dict[str, Any]) -> None:
    # Given a job image that someone also tagged under a name the fetcher never used
    old = made["tags"][0]
    users = f"fetcher-test/prune-users:{SESSION}"
    engine.images.get(old).tag(users)
    made["tags"].append(users)

    # When it is pruned
    gone = prune_images(engine, {old: time.time() - 30 * DAY_S}, keep_days=7, max_total_bytes=None)

    # Then the fetcher's name is gone, the image stays under the user's name
    assert gone == [old]
    assert not exists(engine, old)
    assert engine.images.get(users).id == made["old"]
