"""`fetcher status` beside a real fetcher: the running job, then that the daemon is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.helpers import Env, fetcher_id, fetcher_process, wait_for

pytestmark = pytest.mark.docker


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
