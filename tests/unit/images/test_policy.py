"""Which job images may go: the policy (table-driven) and its application on a fake engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import pytest
import requests

from fetcher.images.policy import DAY_S, ImageUse, gb_to_bytes, plan_prune, prune_images
from fetcher.metrics import Metrics

NOW = 1_700_000_000.0


MB = 1_000_000


def img(name: str, days_ago: float, size_mb: int = 100) -> ImageUse:
    return ImageUse(
        id=f"sha256:{name}",
        refs=(f"{name}:1",),
        size_bytes=size_mb * MB,
        last_used=NOW - days_ago * DAY_S,
    )


A, B, C, D = img("a", 30), img("b", 10), img("c", 3), img("d", 0.1)


@pytest.mark.parametrize(
    ("images", "keep_days", "cap_mb", "in_use", "removed"),
    [
        pytest.param([A, B, C, D], None, None, set(), [], id="both off: nothing"),
        pytest.param([A, B, C, D], 7, None, set(), ["a", "b"], id="older than keep_days"),
        pytest.param([A, B, C, D], 7, None, {"a"}, ["b"], id="in use is kept however old"),
        pytest.param([A, B, C, D], 45, None, set(), [], id="all recent"),
        pytest.param([img("e", 7.0)], 7, None, set(), [], id="exactly keep_days old: kept"),
        pytest.param([A, B, C, D], None, 400, set(), [], id="under the cap"),
        pytest.param([A, B, C, D], None, 250, set(), ["a", "b"], id="LRU until under the cap"),
        pytest.param([A, B, C, D], None, 250, {"a"}, ["b", "c"], id="in use counts, not removed"),
        pytest.param([A, B, C, D], None, 50, {"b"}, ["a", "c", "d"], id="in use alone over cap"),
        pytest.param([A, B, C, D], 20, 150, set(), ["a", "b", "c"], id="age first, then the cap"),
        pytest.param([A, B, C, D], 7, 1000, set(), ["a", "b"], id="cap met after age"),
        pytest.param(
            [img("x", 5, 300), img("y", 6, 10), img("z", 1, 10)],
            None,
            100,
            set(),
            ["y", "x"],
            id="strictly by last use, not by size",
        ),
    ],
)
def test_plan_prune_removes_by_age_then_by_least_recent_use_never_an_image_in_use(
    images: list[ImageUse],
    keep_days: float | None,
    cap_mb: int | None,
    in_use: set[str],
    removed: list[str],
) -> None:
    plan = plan_prune(
        images,
        NOW,
        keep_days,
        None if cap_mb is None else cap_mb * MB,
        {f"sha256:{n}" for n in in_use},
    )
    assert [i.id.removeprefix("sha256:") for i in plan] == removed


def test_gb_to_bytes_counts_decimal_gigabytes_and_keeps_none() -> None:
    assert gb_to_bytes(None) is None
    assert gb_to_bytes(1.5) == 1_500_000_000


# --- prune_images on a fake engine -----------------------------------------------------------
@dataclass
class FakeImage:
    id: str
    tags: list[str]
    size: int = 100 * MB

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Id": self.id, "RepoTags": self.tags, "Size": self.size}


def api_error(code: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = code
    return docker.errors.APIError(message, response=response, explanation=message)


@dataclass
class FakeEngine:
    """Just enough of docker.DockerClient: images.get/remove, api.containers. Removing the last
    tag of an image a container uses is refused, as the engine does."""

    images_by_id: dict[str, FakeImage] = field(default_factory=dict)
    container_images: list[str] = field(default_factory=list)
    refuse: dict[str, docker.errors.APIError] = field(default_factory=dict)
    down: bool = False
    attempted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = self
        self.api = self

    def add(self, image_id: str, *tags: str) -> None:
        self.images_by_id[image_id] = FakeImage(image_id, list(tags))

    def containers(self, all: bool = False) -> list[dict[str, str]]:
        assert all, "every container counts, not only running ones"
        if self.down:
            raise requests.ConnectionError("engine down")
        return [{"Id": f"c{i}", "ImageID": image} for i, image in enumerate(self.container_images)]

    def get(self, ref: str) -> FakeImage:
        if self.down:
            raise requests.ConnectionError("engine down")
        if ref == "bad ref!":
            raise api_error(400, "invalid reference format")
        for image in self.images_by_id.values():
            if ref == image.id or ref in image.tags:
                return image
        raise docker.errors.ImageNotFound(ref)

    def remove(self, ref: str, noprune: bool = False) -> None:
        assert noprune is False
        self.attempted.append(ref)
        if ref in self.refuse:
            raise self.refuse[ref]
        image = self.get(ref)
        if ref in image.tags and len(image.tags) > 1:
            image.tags.remove(ref)
        elif image.id in self.container_images:
            raise api_error(409, f"conflict: unable to remove repository reference {ref!r}")
        else:
            del self.images_by_id[image.id]


def test_prune_removes_old_images_and_keeps_those_in_use_or_starting() -> None:
    # Given four ledgered images used 30 days ago: one used by an exited container, one a job
    # is about to start, two with no container; and a user image not in the ledger
    engine = FakeEngine()
    for name in ("old", "inuse", "starting", "old2", "users"):
        engine.add(f"sha256:{name}", f"{name}:1")
    engine.container_images = ["sha256:inuse"]
    ledger = {f"{n}:1": NOW - 30 * DAY_S for n in ("old", "inuse", "starting", "old2")}
    metrics = Metrics()

    # When pruning with keep_days=7
    gone = prune_images(
        engine,
        ledger,
        keep_days=7,
        max_total_bytes=None,
        now=NOW,
        keep_refs=["starting:1"],
        metrics=metrics,
    )

    # Then only the two unused ones are removed (the others not even tried), the user's untouched
    assert sorted(gone) == ["old2:1", "old:1"]
    assert sorted(engine.attempted) == ["old2:1", "old:1"]
    assert sorted(engine.images_by_id) == ["sha256:inuse", "sha256:starting", "sha256:users"]
    assert metrics.registry.get_sample_value("fetcher_images_pruned_total") == 2
    assert metrics.registry.get_sample_value("fetcher_image_pruned_bytes_total") == 200 * MB


def test_an_image_the_user_also_tagged_keeps_the_users_name() -> None:
    # Given a ledgered image that also carries a name the fetcher never used
    engine = FakeEngine()
    engine.add("sha256:shared", "job:1", "mine:prod")

    # When it is pruned
    gone = prune_images(
        engine, {"job:1": NOW - 30 * DAY_S}, keep_days=7, max_total_bytes=None, now=NOW
    )

    # Then only the fetcher's name goes
    assert gone == ["job:1"]
    assert engine.images_by_id["sha256:shared"].tags == ["mine:prod"]


def test_refs_of_one_image_are_grouped_and_the_latest_use_counts() -> None:
    # Given one image under two refs, one used long ago and one recently
    engine = FakeEngine()
    engine.add("sha256:one", "a:1", "a:latest")
    ledger = {"a:1": NOW - 30 * DAY_S, "a:latest": NOW - 1 * DAY_S}

    # When pruning with keep_days=7, it is kept; with a tiny cap, both refs go
    assert prune_images(engine, ledger, keep_days=7, max_total_bytes=None, now=NOW) == []
    gone = prune_images(engine, ledger, keep_days=None, max_total_bytes=1, now=NOW)
    assert sorted(gone) == ["a:1", "a:latest"]
    assert engine.images_by_id == {}


def test_refused_removals_are_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    # Given two old images: a container appears for one of them after the listing
    engine = FakeEngine()
    engine.add("sha256:raced", "raced:1")
    engine.add("sha256:free", "free:1")
    engine.refuse["raced:1"] = api_error(
        409, "conflict: container 1234 is using its referenced image"
    )
    ledger = {"raced:1": NOW - 30 * DAY_S, "free:1": NOW - 30 * DAY_S}
    caplog.set_level(logging.INFO, "fetcher.images")

    # When pruning
    gone = prune_images(engine, ledger, keep_days=7, max_total_bytes=None, now=NOW)

    # Then the refused one stays (logged), the other goes, and nothing is raised
    assert gone == ["free:1"]
    assert "sha256:raced" in engine.images_by_id
    assert "images: raced:1 kept: the engine refused to remove it (conflict" in caplog.text


def test_refs_naming_no_image_are_returned_to_be_forgotten() -> None:
    # Given refs that name no image any more, or never could
    engine = FakeEngine()
    ledger = {"deleted-by-hand:1": NOW, "bad ref!": NOW}

    # When pruning (even with nothing old), they come back to be forgotten
    assert sorted(prune_images(engine, ledger, keep_days=7, max_total_bytes=None, now=NOW)) == [
        "bad ref!",
        "deleted-by-hand:1",
    ]


def test_an_engine_that_does_not_answer_prunes_nothing_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FakeEngine(down=True)
    engine.add("sha256:old", "old:1")
    gone = prune_images(engine, {"old:1": 0.0}, keep_days=1, max_total_bytes=None, now=NOW)
    assert gone == []
    assert "images: pruning skipped: the engine did not answer" in caplog.text


def test_with_both_settings_off_the_engine_is_not_even_asked() -> None:
    engine = FakeEngine(down=True)
    assert prune_images(engine, {"old:1": 0.0}, keep_days=None, max_total_bytes=None) == []
