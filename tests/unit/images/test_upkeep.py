"""The background refresh: the `:latest` and untagged images of recent jobs are pulled again
before their next job; images by tag or digest, old ones, and failures are left alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import docker.errors

from fetcher.images.ledger import ImageLedger
from fetcher.images.upkeep import ImageUpkeep
from fetcher.metrics import Metrics
from fetcher.settings import Settings
from fetcher.store import JobStore

DAY = 86400.0


class FakeImages:
    """Each pull of a ref moves it to a new id when `moves` says so; `fail` refs cannot be pulled."""

    def __init__(self, moves: set[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.ids: dict[str, str] = {}
        self.moves, self.fail = moves, fail
        self.pulled: list[str] = []

    def get(self, ref: str) -> Any:
        if ref not in self.ids:
            raise docker.errors.ImageNotFound(ref)
        return type("Image", (), {"id": self.ids[ref]})()

    def pull(self, repo: str, tag: str | None = None) -> None:
        ref = f"{repo}:{tag}"
        self.pulled.append(ref)
        if ref in self.fail:
            raise docker.errors.APIError("500 Server Error", explanation="registry down")
        if ref in self.moves or ref not in self.ids:
            self.ids[ref] = f"sha256:{len(self.pulled):064d}"


def upkeep(tmp_path: Path, images: FakeImages, ledger: dict[str, float]) -> ImageUpkeep:
    settings = Settings(
        _env_file=None, api_url="http://x", access_token="tok-12345", path_base=tmp_path
    )
    book = ImageLedger(tmp_path / "images.json")
    for ref, when in ledger.items():
        book.used(ref, when)
    client = type("Client", (), {"images": images})()
    store = JobStore(tmp_path / "jobs.sqlite")
    return ImageUpkeep(settings, client, store, book, Metrics(), threading.Event())


def test_recent_latest_images_are_pulled_again_and_a_moved_tag_is_named(tmp_path: Path) -> None:
    now = time.time()
    images = FakeImages(moves={"reg/decode:latest"})
    images.ids = {"reg/decode:latest": "sha256:old", "reg/other:latest": "sha256:same"}
    u = upkeep(
        tmp_path,
        images,
        {
            "reg/decode:latest": now - DAY,  # :latest, used yesterday: refreshed, and it moved
            "reg/other:latest": now - 2 * DAY,  # refreshed, did not move
            "reg/decode:v0_10_1": now - DAY,  # a fixed tag: never pulled again
            "reg/stale:latest": now - 30 * DAY,  # not used for a month: left alone
        },
    )
    assert u.refresh_once(now) == ["reg/decode:latest"]
    assert sorted(images.pulled) == ["reg/decode:latest", "reg/other:latest"]


def test_a_registry_failure_is_logged_and_the_next_image_is_refreshed(tmp_path: Path) -> None:
    now = time.time()
    images = FakeImages(moves={"reg/b:latest"}, fail={"reg/a:latest"})
    u = upkeep(tmp_path, images, {"reg/a:latest": now, "reg/b:latest": now})
    assert u.refresh_once(now) == ["reg/b:latest"]


def test_the_refresh_is_off_with_a_zero_interval_or_a_never_pull_policy(tmp_path: Path) -> None:
    base = {"api_url": "http://x", "access_token": "tok-12345", "path_base": tmp_path}
    off = Settings(_env_file=None, image_refresh_interval_s=0, **base)  # type: ignore[arg-type]
    never = Settings(_env_file=None, image_pull_policy="never", **base)  # type: ignore[arg-type]
    for s in (off, never):
        u = ImageUpkeep(s, None, None, None, Metrics(), threading.Event())  # type: ignore[arg-type]
        assert not u.refreshing


def test_no_image_is_refreshed_under_a_policy_that_keeps_present_images(tmp_path: Path) -> None:
    # Given IMAGE_PULL_POLICY=if-not-present and a locally built decode:latest a job used today
    settings = Settings(
        _env_file=None,
        api_url="http://x",
        access_token="tok-12345",
        path_base=tmp_path,
        image_pull_policy="if-not-present",
    )
    now = time.time()
    book = ImageLedger(tmp_path / "images.json")
    book.used("local/decode:latest", now)
    images = FakeImages(moves={"local/decode:latest"})
    images.ids = {"local/decode:latest": "sha256:locally-built"}
    client = type("Client", (), {"images": images})()
    u = ImageUpkeep(
        settings, client, JobStore(tmp_path / "j.sqlite"), book, Metrics(), threading.Event()
    )
    # Then the refresh is off and pulls nothing (a job never pulls a present image under it: a
    # refresh would move the tag under the jobs, to the registry's image)
    u.refresh_once(now)
    assert images.pulled == [], f"refresh pulled {images.pulled} under if-not-present"
    assert images.ids["local/decode:latest"] == "sha256:locally-built"
    assert not u.refreshing
