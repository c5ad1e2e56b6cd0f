"""Review finding: start failures are told apart by markers in the engine's message, and part of
that message is the job's doing. An image with a regular file at /files fails to start with
"error mounting ... to rootfs at "/files" ... not a directory", which matched the "error mounting"
marker of this box's own troubles: the job was handed back (`queued`) instead of ending in
`error`, to fail the same way on every worker of the pool.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from tests.helpers import IMAGE, Env, fetcher_id, statuses

pytestmark = pytest.mark.docker

FILES_IS_A_FILE = "review-test/files-is-a-file:1"


@pytest.fixture
def bad_image(engine: Any) -> Iterator[str]:
    dockerfile = f"FROM {IMAGE}\nRUN echo x > /files\n"
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=FILES_IS_A_FILE, rm=True)
    yield FILES_IS_A_FILE
    engine.images.remove(FILES_IS_A_FILE, force=True)


def test_an_image_that_cannot_take_the_files_mount_is_the_jobs_error(
    env: Env, engine: Any, bad_image: str
) -> None:
    job = env.submit(["true"], image=bad_image)
    daemon = build_daemon(
        env.settings(fetcher_id=fetcher_id("mountfile"), image_pull_policy="never"),
        exit_when_idle=True,
        docker_client=engine,
    )
    assert daemon.run() == 0
    assert job.status.value == "error", statuses(job)
    assert "/files" in str(job.history[-1]["runtime_details"])
