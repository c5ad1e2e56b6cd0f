"""One job end to end: real HTTP to mock_api, a real Docker engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from tests.helpers import Env, statuses

pytestmark = pytest.mark.docker


def run_until_idle(env: Env, engine: Any, **settings: Any) -> None:
    daemon = build_daemon(env.settings(**settings), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0


def test_job_reads_inputs_runs_shell_and_uploads_nested_outputs(env: Env, engine: Any) -> None:
    # Given a job whose command reads inputs under /files, uses $(...) and &&, reads an env var,
    # and writes outputs in nested directories
    yaml_id = env.input_file("user1/config/param.yaml", b"lr: 0.1\n")
    calib_id = env.input_file("user1/data/calib.bin", bytes(range(256)) * 100)
    job = env.submit(
        ["cd /files", "&&", "mkdir -p output/a/b log",
         "&&", "cp $(find /files/config -name '*.yaml' | head -n 1) output/a/b/param-copy.yaml",
         "&&", "echo seed=$DECODE_SEED > output/a/seed.txt",
         "&&", "wc -c < data/sub/calib.bin > output/size.txt", "&&", "echo done-ok"],
        files_down={"config/param.yaml": yaml_id, "data/sub/calib.bin": calib_id},
        env={"DECODE_SEED": "42"},
    )
    # When the fetcher runs until no job is left
    run_until_idle(env, engine)
    # Then the job is finished and every output is in the store at the right place
    assert job.status.value == "finished", job.history
    assert statuses(job)[:5] == ["queued", "pulled", "preprocessing", "running", "postprocessing"]
    out = Path(job.paths_upload["output"])
    assert (out / "a/b/param-copy.yaml").read_bytes() == b"lr: 0.1\n"
    assert (out / "a/seed.txt").read_text() == "seed=42\n"
    assert (out / "size.txt").read_text().strip() == "25600"
    logs = Path(job.paths_upload["log"], "container.log").read_text()
    assert "done-ok" in logs
    assert {(u["type"], u["base_path"], u["filename"]) for u in job.uploads} >= {
        ("output", "a/b", "param-copy.yaml"), ("output", "a", "seed.txt"), ("output", "", "size.txt"),
        ("log", "", "container.log")}
    assert list(env.base.iterdir()) == [env.base / ".fetcher"], "job directory left behind"


def test_exit_code_3_is_an_error_with_the_log_tail(env: Env, engine: Any) -> None:
    job = env.submit(["echo first-line", "&&", "echo something broke >&2", "&&", "exit 3"])
    run_until_idle(env, engine)
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("exit_code: 3")
    assert "something broke" in details and "b'" not in details
