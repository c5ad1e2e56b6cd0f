"""Running it for weeks, on a real engine: /metrics moves as real jobs do, `fetcher status` shows
a running job, a job's output is bounded on the engine's side and in its uploaded log, and job
images are pruned by the policy (never one in use)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from mock_api.server import free_port
from tests.helpers import IMAGE, Env, fetcher_id, wait_for
from tests.integration.test_daemon import fetcher_process, in_thread

pytestmark = pytest.mark.docker


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_real_jobs_run(env: Env, engine: Any) -> None:
    # Given a fetcher serving /metrics, a job with an input that runs 3 s, and one that fails
    port = free_port()
    data = env.input_file("user1/in/data.bin", b"z" * 12345)
    long = env.submit(
        ["sleep 3", "&&", "echo out > /files/output/o.txt"], files_down={"in/data.bin": data}
    )
    daemon = build_daemon(env.settings(metrics_port=port), docker_client=engine)
    t, _ = in_thread(daemon.run)
    try:
        # While the first job runs: one slot busy, a claim made, no job ended yet
        wait_for(lambda: long.status.value == "running", 30, "running")
        during = scrape(port)
        assert value(during, "fetcher_jobs_running") == 1
        assert value(during, "fetcher_job_slots") == 1
        assert value(during, "fetcher_api_calls_total", call="claim", outcome="ok") >= 1
        assert value(during, "fetcher_jobs_total", outcome="finished") == 0
        assert value(during, "fetcher_seconds_since_last_claim") < 30
        assert value(during, "fetcher_transfer_bytes_total", direction="down") == 12345
        failing = env.submit(["exit 3"], files_up={})
        wait_for(lambda: long.status.value == "finished", 30, "first job finished")
        wait_for(lambda: failing.status.value == "error", 30, "second job failed")
        wait_for(lambda: value(scrape(port), "fetcher_jobs_total", outcome="error") == 1, 10, "end")
        after = scrape(port)
    finally:
        daemon.worker.request_stop()
        t.join(60)
    # Then the counters and histograms moved as the jobs did
    assert value(after, "fetcher_jobs_claimed_total") == 2
    assert value(after, "fetcher_jobs_total", outcome="finished") == 1
    assert value(after, "fetcher_jobs_total", outcome="error") == 1
    assert value(after, "fetcher_job_failures_total", reason="exit_code") == 1
    assert value(after, "fetcher_stage_seconds_count", stage="run") == 2
    assert value(after, "fetcher_stage_seconds_sum", stage="run") >= 3
    assert value(after, "fetcher_stage_seconds_count", stage="download") == 2
    assert value(after, "fetcher_stage_seconds_count", stage="upload") == 2
    assert value(after, "fetcher_transfer_bytes_total", direction="up") > 0
    assert value(after, "fetcher_jobs_running") == 0
    assert value(after, "fetcher_outbox_pending") == 0


def test_fetcher_status_shows_the_running_job(env: Env, engine: Any) -> None:
    job = env.submit(["sleep 8"], files_up={})
    fid = fetcher_id("status")
    proc = fetcher_process(env, fid)
    try:
        wait_for(lambda: job.status.value == "running", 30, "running")
        time.sleep(1.5)  # a pass of the loop has written its snapshot
        cmd = [sys.executable, "-m", "fetcher", "status", "--path-base", str(env.base)]
        as_json = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=30)
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    finally:
        proc.terminate()
        proc.wait(60)
    assert as_json.returncode == 0, as_json.stderr
    info = json.loads(as_json.stdout)
    assert info["daemon_running"] is True and info["heartbeat_age_s"] < 10
    [running] = info["running"]
    assert running["job_id"] == str(job.id) and running["stage"] == "running"
    assert running["container"] and running["elapsed_s"] >= 1
    assert info["daemon"]["fetcher_id"] == fid and info["daemon"]["slots"]["busy"] == 1
    assert f"job {job.id}" in text.stdout and "running" in text.stdout, text.stdout
    # and once the daemon is gone, status says so
    after = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=30)
    assert json.loads(after.stdout)["daemon_running"] is False


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
    t, out = in_thread(daemon.run)
    sizes: list[int] = []

    def engine_log_size() -> bool:
        for c in engine.containers.list(filters={"label": f"{LABEL_ID}={fid}"}):
            path = Path(c.attrs["LogPath"])
            with contextlib.suppress(OSError):
                sizes.append(path.stat().st_size)
        return bool(sizes) and job.status.value == "running" and sizes[-1] > 0

    wait_for(engine_log_size, 60, "the engine's log of the running job")
    time.sleep(1.5)
    engine_log_size()
    t.join(120)
    assert out.get("rc") == 0 and job.status.value == "finished", job.history
    # Then the engine kept at most its limit (plus one json line), while the job printed 50 MB
    assert max(sizes) <= 1024 * 1024 + 4096, sizes
    # And the uploaded log is the start of the output, cut at 2 MB with a note saying so
    log = Path(job.paths_upload["log"], "log", "container.log").read_bytes()
    assert 2 * 1024 * 1024 <= len(log) < 2 * 1024 * 1024 + 200
    assert log.rstrip().endswith(b"more bytes of output not kept (JOB_LOG_MAX_MB)]")


def test_a_job_printing_fast_keeps_all_its_output_up_to_the_cap(env: Env, engine: Any) -> None:
    # Review finding: the fetcher followed the engine's json-file log, which rotates at
    # JOB_ENGINE_LOG_MAX_MB: a job printing faster than the follower read lost its output
    # ("Error grabbing logs: no such file or directory"; 30 MB came through as 7.6 MB).
    job = env.submit(
        ["yes 'a line of output from a chatty job' | head -c 30000000; echo; echo the-end"],
        files_up={"log": "log"},
    )
    daemon = build_daemon(
        env.settings(job_engine_log_max_mb=1, job_log_max_mb=100),
        exit_when_idle=True,
        docker_client=engine,
    )
    t, out = in_thread(daemon.run)
    t.join(180)
    assert out.get("rc") == 0 and job.status.value == "finished", job.history
    log = Path(job.paths_upload["log"], "log", "container.log").read_bytes()
    assert len(log) == 30_000_000 + len("\nthe-end\n")
    assert log.endswith(b"\nthe-end\n") and b"Error grabbing logs" not in log


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
