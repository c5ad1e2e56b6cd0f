"""The purge container (a fetcher that cannot delete what a job wrote as root empties the job
directory with the job's own image): it empties the directory, and it runs bounded like the job."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import ContainerCollection

from fetcher.engine import purge as purge_module
from fetcher.engine.container import LABEL_ID, ContainerOptions
from fetcher.engine.purge import purge
from fetcher.job.workspace import Layout, Workspace
from tests.helpers import IMAGE, Env, fetcher_id, run_until_idle

pytestmark = pytest.mark.docker


def test_files_the_fetcher_may_not_delete_are_removed_with_a_container(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetcher.job.workspace import Workspace

    # Given a fetcher that cannot delete what the job wrote (as a plain user facing root's files)
    seen_at_retry: list[list[str]] = []
    real_remove = Workspace.remove

    def remove(self: Workspace) -> bool:
        if not seen_at_retry:
            seen_at_retry.append([])
            return False  # permission denied
        seen_at_retry.append(sorted(p.name for p in self.path.iterdir()))
        return real_remove(self)

    monkeypatch.setattr(Workspace, "remove", remove)
    job = env.submit(["mkdir -p /files/output/deep", "&&", "echo x > /files/output/deep/.hidden"])
    assert run_until_idle(env.settings(), engine) == 0
    # Then a container emptied the directory as root, and it is gone
    assert job.status.value == "finished"
    assert seen_at_retry[1] == [], "the purge container emptied the job directory"
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


HANGING = "fetcher-test/hanging-sh:1"


@pytest.fixture
def hanging_image(engine: Any) -> Iterator[str]:
    """An image whose /bin/sh sleeps for an hour instead of running its command."""
    dockerfile = (
        f"FROM {IMAGE}\n"
        "RUN rm /bin/sh && printf '#!/bin/busybox sh\\nexec /bin/busybox sleep 3600\\n' > /bin/sh"
        " && chmod 755 /bin/sh\n"
    )
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=HANGING, rm=True)
    yield HANGING
    engine.images.remove(HANGING, force=True)


def test_the_purge_container_ends_within_a_bound(
    engine: Any, hanging_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge container runs a stranger's image: one whose /bin/sh never ends is given up after
    PURGE_TIMEOUT_S and removed, never holding the job thread (and with it the job's slot and GPU
    share) for ever, nor waited for by `containers.run` with its whole output read into memory. For
    a fetcher that is not root (the Slurm pilots) every job that writes as root reaches this path.
    """
    monkeypatch.setattr(purge_module, "PURGE_TIMEOUT_S", 5)
    # Given a job directory, and the job's image whose /bin/sh hangs
    base = tmp_path / "base"
    base.mkdir()
    ws = Workspace("5", base, base)
    ws.create(Layout((), ()))
    fid = fetcher_id("purge")
    opts = ContainerOptions(stop_grace_s=1)
    # When the fetcher purges the directory with that image
    t = threading.Thread(target=purge, args=(engine, ws, hanging_image, fid, opts), daemon=True)
    t.start()
    t.join(60)
    try:
        # Then it gives up in bounded time, and leaves no container
        assert not t.is_alive(), "purge still waiting after 60 s (its container sleeps 3600 s)"
        left = engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})
        assert not left
    finally:
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"}):
            c.remove(force=True)
        t.join(10)


def test_the_purge_container_is_bounded_like_the_job(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge container gets the job container's bounds: the process limit, a bounded engine log,
    MKNOD dropped."""
    # Given a fetcher whose purge container we can look at
    base = tmp_path / "base"
    base.mkdir()
    ws = Workspace("6", base, base)
    ws.create(Layout((), ()))
    fid = fetcher_id("purgecfg")
    opts = ContainerOptions(pids_limit=256, engine_log_max_mb=5)
    seen: dict[str, Any] = {}
    real_run = ContainerCollection.run
    real_create = ContainerCollection.create

    def run(self: Any, image: str, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_run(self, image, *args, **kwargs)

    def create(self: Any, image: str, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_create(self, image, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "run", run)
    monkeypatch.setattr(ContainerCollection, "create", create)
    # When it purges a job directory
    purge(engine, ws, IMAGE, fid, opts)
    # Then the stranger's image runs with the job's bounds
    assert seen.get("pids_limit") == 256, seen
    assert "MKNOD" in (seen.get("cap_drop") or []), seen
    assert seen.get("log_config") is not None, seen
