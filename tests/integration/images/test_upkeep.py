"""The image upkeep of a daemon on a real engine: an old job image goes, one in use stays."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from fetcher.daemon import build_daemon
from fetcher.images.ledger import ImageLedger
from fetcher.images.upkeep import ImageUpkeep
from fetcher.metrics import Metrics
from fetcher.store import JobStore
from tests.helpers import IMAGE, Env

pytestmark = pytest.mark.docker


def test_the_pruner_removes_an_old_job_image_and_keeps_one_in_use(env: Env, engine: Any) -> None:
    # Given two job images this fetcher used 30 days ago, one of them used by a container now
    tags = [f"fetcher-test/prune-{name}:{os.getpid()}" for name in ("old", "inuse")]
    for tag in tags:
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            dockerfile = f"FROM {IMAGE}\nLABEL made-for={tag}\n".encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        context.seek(0)
        engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    keeper = engine.containers.run(tags[1], ["sleep", "60"], detach=True)
    try:
        daemon = build_daemon(env.settings(image_keep_days=7), docker_client=engine)
        assert daemon.deps.images is not None
        for tag in tags:
            daemon.deps.images.used(tag, time.time() - 30 * 86400)
        # When the pruner runs
        gone = daemon._image_upkeep().prune_once()
        daemon.lock.close()
        # Then the old one is gone, the one in use is not, and the ledger forgot only the old
        assert gone == [tags[0]]
        assert not engine.images.list(name=tags[0].split(":")[0])
        engine.images.get(tags[1])
        assert list(daemon.deps.images.snapshot()) == [tags[1]]
    finally:
        keeper.remove(force=True)
        for tag in tags:
            with contextlib.suppress(Exception):
                engine.images.remove(tag)


pytestmark = pytest.mark.docker

REF = "127.0.0.1:5000/test/refresh:latest"


def test_a_moved_latest_tag_is_pulled_ahead_of_the_next_job(
    env: Env, engine: Any, tmp_path: Path
) -> None:
    # Given the registry's :latest moved to a new image while this box still has the old one
    old = engine.images.get(IMAGE)
    build = f"FROM {IMAGE}\nLABEL org.decode-opencloud.test=moved-{time.time()}\n"
    new, _ = engine.images.build(fileobj=io.BytesIO(build.encode()), rm=True)
    try:
        new.tag(REF)
        engine.images.push(REF)
        old.tag(REF)  # the box's copy: the old one
        assert engine.images.get(REF).id == old.id
        ledger = ImageLedger(tmp_path / "images.json")
        ledger.used(REF)
        settings = env.settings()
        store = JobStore(tmp_path / "jobs.sqlite")
        upkeep = ImageUpkeep(settings, engine, store, ledger, Metrics(), threading.Event())
        # When the upkeep refreshes the images of recent jobs
        moved = upkeep.refresh_once()
        # Then the box has the new image under that tag, before any job asked for it
        assert moved == [REF]
        assert engine.images.get(REF).id == new.id
    finally:
        for ref in (REF, new.id):
            with contextlib.suppress(docker.errors.ImageNotFound):
                engine.images.remove(ref, force=True)
