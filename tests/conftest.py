"""Fixtures for every test: the mock API (`env`), the real engine (`engine`, `docker_client`),
`responses` (`rsps`, `rsps_lenient`), a fake clock (`clock`) and an empty job store (`store`).
Helpers are in tests/helpers/, stand-ins for the outside world in tests/fakes/."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import responses

from fetcher.engine.container import LABEL, LABEL_ID
from fetcher.store import JobStore
from mock_api.server import MockServer
from mock_api.state import MockState
from tests.fakes.clock import FakeClock
from tests.helpers.env import API_KEY, IMAGE, SESSION, TOKEN, Env

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A fresh mock API on 127.0.0.1 and an empty base path."""
    state = MockState(str(tmp_path / "data"), API_KEY, [TOKEN])
    base = tmp_path / "base"
    base.mkdir()
    with MockServer(state) as server:
        yield Env(server, tmp_path, base)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """The real Docker engine. Skips on a laptop without one; fails under CI=true."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:
        message = f"Docker engine or test image {IMAGE} unavailable ({exc}); run scripts/test.sh to set them up"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return client


@pytest.fixture
def engine(docker_client: Any) -> Iterator[Any]:
    """The engine, checked after the test: no container of this session's fetchers may be left
    behind (containers of other test runs on the same engine are not looked at)."""
    yield docker_client
    # the plain listing (no inspect per container): another run's container may be removed
    # between the listing and an inspect of it, which must not fail this test
    left = [
        c
        for c in docker_client.api.containers(all=True, filters={"label": LABEL})
        if (c.get("Labels") or {}).get(LABEL_ID, "").startswith(SESSION)
    ]
    for c in left:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_container(c["Id"], force=True)
    assert not left, f"containers left behind: {[c['Names'] for c in left]}"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """`responses` for the test: every request must match a registered answer, and every
    registered answer must be asked for by the end of the test."""
    with responses.RequestsMock() as r:
        yield r


@pytest.fixture
def rsps_lenient() -> Iterator[responses.RequestsMock]:
    """`rsps` for a test whose registered answers need not all be asked for (a test of what the
    fetcher does not send)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


@pytest.fixture
def clock() -> FakeClock:
    """A clock that stands still until the test moves `clock.now`."""
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    """An empty job store in the test's directory."""
    return JobStore(tmp_path / "jobs.sqlite")


# The fetcher's own image, as `poetry run docker-build` makes it, from the test Python image.
FETCHER_BASE_IMAGE = os.environ.get("FETCHER_TEST_PYTHON_IMAGE", "fetcher-test/pycopy:3.11")
FETCHER_IMAGE_TAG = "decode-fetcher:test"


@pytest.fixture(scope="module")
def fetcher_image(docker_client: Any) -> str:
    """The fetcher's image, built once per module that uses it (a test may remove it after)."""
    from scripts import docker_tasks

    try:
        docker_client.images.get(FETCHER_BASE_IMAGE)
    except Exception as exc:
        pytest.fail(f"base image {FETCHER_BASE_IMAGE} missing ({exc}); scripts/test.sh builds it")
    assert docker_tasks.build(["--base", FETCHER_BASE_IMAGE, "--tag", FETCHER_IMAGE_TAG]) == 0
    labels = docker_client.images.get(FETCHER_IMAGE_TAG).labels
    assert labels["org.opencontainers.image.version"] == docker_tasks.version()
    return FETCHER_IMAGE_TAG
