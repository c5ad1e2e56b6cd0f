"""The commands a user types: demo, info, health, --version, and `run` with a wrong setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fetcher import __version__
from fetcher.cli import main
from tests.helpers import TOKEN, Env, fetcher_id, fetcher_process, output_of


def test_version_prints_the_installed_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fetcher", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fetcher {__version__}" and __version__ != "0+unknown"


@pytest.mark.docker
def test_demo_runs_a_job_to_finished(
    engine: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "finished (exit_code: 0)" in out and "artifact/model/history.txt" in out


@pytest.mark.docker
def test_info_prints_what_would_be_offered(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(env.root)
    for k, v in {
        "API_URL": env.mock.url,
        "ACCESS_TOKEN": TOKEN,
        "PATH_BASE": str(env.base),
        "RESERVE_CPU_CORES": "1",
        "MEMORY_MB": "4000",
    }.items():
        monkeypatch.setenv(k, v)
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["memory_mb"] == 4000 and info["first_claim"]["memory"] == 4000
    assert info["first_claim"]["gpu_mem"] == 0 and info["parallel_jobs"] == 1


def test_health_follows_the_heartbeat(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(env.root)
    for k, v in {
        "API_URL": env.mock.url,
        "ACCESS_TOKEN": TOKEN,
        "PATH_BASE": str(env.base),
    }.items():
        monkeypatch.setenv(k, v)
    assert main(["health"]) == 1
    (env.base / ".fetcher").mkdir()
    (env.base / ".fetcher/heartbeat").touch()
    assert main(["health"]) == 0


@pytest.mark.docker
def test_run_command_with_a_wrong_setting_exits_2_naming_it(env: Env, tmp_path: Path) -> None:
    proc = fetcher_process(env, fetcher_id("cfg"), TIMEOUT_STATUS="often")
    rc = proc.wait(30)
    output = output_of(proc)
    assert rc == 2 and "TIMEOUT_STATUS" in output and "Traceback" not in output
