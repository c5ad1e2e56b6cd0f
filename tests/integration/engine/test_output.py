"""A job's output on a real engine: bounded on the engine's side and in the uploaded log, and
kept whole up to the cap however fast the job prints."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from tests.helpers import Env, daemon_in_thread, fetcher_id, run_until_idle, wait_for

pytestmark = pytest.mark.docker


def test_a_job_printing_50_mb_is_bounded_on_the_engine_and_in_its_log(
    env: Env, engine: Any
) -> None:
    # Given engine-side logs of at most 1 MB and an uploaded log of at most 2 MB
    job = env.submit(
        ["yes 'a line of output from a chatty job' | head -c 50000000", "&&", "sleep 4"],
        files_up={"log": "log"},
    )
    fid = fetcher_id("chatty")
    daemon = build_daemon(
        env.settings(fetcher_id=fid, job_engine_log_max_mb=1, job_log_max_mb=2),
        exit_when_idle=True,
        docker_client=engine,
    )
    sizes: list[int] = []

    def engine_log_size() -> bool:
        for c in engine.containers.list(filters={"label": f"{LABEL_ID}={fid}"}):
            path = Path(c.attrs["LogPath"])
            with contextlib.suppress(OSError):
                sizes.append(path.stat().st_size)
        return bool(sizes) and job.status.value == "running" and sizes[-1] > 0

    with daemon_in_thread(daemon, timeout_s=120) as run:
        wait_for(engine_log_size, 60, "the engine's log of the running job")
        time.sleep(1.5)
        engine_log_size()
    assert run.rc == 0 and job.status.value == "finished", job.history
    # Then the engine kept at most its limit (plus one json line), while the job printed 50 MB
    assert max(sizes) <= 1024 * 1024 + 4096, sizes
    # And the uploaded log is the start of the output, cut at 2 MB with a note saying so
    log = Path(job.paths_upload["log"], "log", "container.log").read_bytes()
    assert 2 * 1024 * 1024 <= len(log) < 2 * 1024 * 1024 + 200
    assert log.rstrip().endswith(b"more bytes of output not kept (JOB_LOG_MAX_MB)]")


def test_a_job_printing_fast_keeps_all_its_output_up_to_the_cap(env: Env, engine: Any) -> None:
    """The output is read from the container's attach stream, not from the engine's json-file log
    (which rotates at JOB_ENGINE_LOG_MAX_MB): a job printing 30 MB faster than any reader keeps all
    of it, and no "Error grabbing logs" in its place."""
    job = env.submit(
        ["yes 'a line of output from a chatty job' | head -c 30000000; echo; echo the-end"],
        files_up={"log": "log"},
    )
    settings = env.settings(job_engine_log_max_mb=1, job_log_max_mb=100)
    rc = run_until_idle(settings, engine, timeout_s=180)
    assert rc == 0 and job.status.value == "finished", job.history
    log = Path(job.paths_upload["log"], "log", "container.log").read_bytes()
    assert len(log) == 30_000_000 + len("\nthe-end\n")
    assert log.endswith(b"\nthe-end\n") and b"Error grabbing logs" not in log
