"""On the real engine and the local registry: a `:latest` tag that moved in the registry is
pulled in the background, before the next job needs it."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from fetcher.images.ledger import ImageLedger
from fetcher.images.upkeep import ImageUpkeep
from fetcher.metrics import Metrics
from fetcher.store import JobStore
from tests.helpers import IMAGE, Env

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
