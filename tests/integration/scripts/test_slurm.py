"""A fleet of fetchers as a Slurm job array on a real single-node Slurm (scripts/slurm-cluster.sh up)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fetcher.engine.container import LABEL, LABEL_ID
from tests.conftest import IN_CI
from tests.helpers import TOKEN, Env, fetcher_id, statuses

pytestmark = [pytest.mark.slurm, pytest.mark.docker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
SBATCH_SCRIPT = ROOT / "scripts/slurm/fetcher.sbatch"
SLURM_CONF = os.environ.get("SLURM_CONF") or "/var/lib/fetcher-slurm/slurm.conf"
FINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The environment for Slurm's clients. Skips without a cluster; fails under CI=true."""
    environ = {**os.environ, "SLURM_CONF": SLURM_CONF}
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], env=environ, capture_output=True, text=True, timeout=30
        )
        assert "UP" in ping.stdout, ping.stdout + ping.stderr
    except (OSError, AssertionError, subprocess.TimeoutExpired) as exc:
        message = f"no Slurm cluster answers ({exc}); scripts/slurm-cluster.sh up starts one"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return environ


def sbatch(environ: dict[str, str], *args: str) -> str:
    """Submit; returns the job id (of the array)."""
    out = subprocess.run(
        ["sbatch", "--parsable", *args], env=environ, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().split(";")[0]


def job_records(environ: dict[str, str], job: str) -> list[dict[str, str]]:
    """`scontrol show job -o`: one record per array task (pending tasks may share one record)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job], env=environ, capture_output=True, text=True
    )
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.stdout.splitlines() if line]


def wait_for_array(
    environ: dict[str, str], job: str, tasks: int, timeout_s: float
) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    records: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        records = job_records(environ, job)
        done = [r for r in records if r.get("JobState") in FINAL]
        if len(done) == tasks and len(records) == tasks:
            return records
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=environ, capture_output=True)
    raise AssertionError(f"array {job} did not end within {timeout_s} s: {records}")


def task_logs(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("slurm-*.out"))}


def test_an_array_of_three_fetchers_drains_twelve_jobs(
    env: Env, engine: Any, slurm: dict[str, str], tmp_path: Path
) -> None:
    # Given 12 jobs in the queue (CPU jobs: this machine has no GPU) ...
    jobs = [
        env.submit(
            [f"mkdir -p /files/output && sleep 1 && echo job {i} > /files/output/result.txt"]
        )
        for i in range(12)
    ]
    # ... and the pilots' settings, exported to the array as a user would
    pilots, prefix = tmp_path / "pilots", fetcher_id("slurm")
    pilots.mkdir()
    environ = {
        **slurm,
        "API_URL": env.mock.url,
        "ACCESS_TOKEN": TOKEN,
        "PATH_BASE": str(pilots),
        "FETCHER_ID_PREFIX": prefix,
        "TIMEOUT_JOB": "0.5",
        "TIMEOUT_STATUS": "2",
        "EXIT_IDLE_POLLS": "3",
        "SHM_SIZE": "64m",
        "JOB_DEFAULT_MEMORY_MB": "64",
    }
    # When the README's command submits three fetchers, each asking for one (fake) GPU
    started = time.monotonic()
    array = sbatch(
        environ,
        "--array=1-3",
        "--gres=gpu:1",
        "--export=ALL",
        "--time=10",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/slurm-%A_%a.out",
        str(SBATCH_SCRIPT),
    )
    records = wait_for_array(slurm, array, 3, timeout_s=240)
    elapsed = time.monotonic() - started
    logs = task_logs(tmp_path)
    # Then every task ended COMPLETED with exit code 0 once the queue stayed empty
    assert sorted(r["ArrayTaskId"] for r in records) == ["1", "2", "3"], records
    for r in records:
        assert (r["JobState"], r["ExitCode"]) == ("COMPLETED", "0:0"), (r, logs)
    # And every job finished exactly once, with its output uploaded
    for job in jobs:
        assert job.status.value == "finished", (job.id, statuses(job), logs)
        assert statuses(job).count("finished") == 1 and "error" not in statuses(job)
        assert any(u["filename"] == "result.txt" for u in job.uploads)
    # And each task had its own directory, fetcher id and GPU from Slurm, and left no job directory
    for task in ("1", "2", "3"):
        log = logs[f"slurm-{array}_{task}.out"]
        assert f"fetcher {prefix}-{task}," in log and f"PATH_BASE={pilots / task}," in log, log
        assert re.search(r"GPUs \d+$", log.splitlines()[0]), log  # SLURM_JOB_GPUS was set
        assert [p.name for p in (pilots / task).iterdir()] == [".fetcher"], log
    # And no container of these fetchers is left on the engine
    left = [
        c["Names"]
        for c in engine.api.containers(all=True, filters={"label": LABEL})
        if (c.get("Labels") or {}).get(LABEL_ID, "").startswith(prefix)
    ]
    assert not left
    by_fetcher = {f"{prefix}-{t}": 0 for t in ("1", "2", "3")}
    for log in logs.values():
        for fid in by_fetcher:
            if f"fetcher {fid}," in log:
                by_fetcher[fid] = log.count("reported finished")
    print(f"slurm array of 3 fetchers, 12 jobs: {elapsed:.1f} s; jobs per fetcher: {by_fetcher}")


FAKE_PYNVML = '''"""A stand-in for pynvml: FAKE_NVML_GPUS GPUs, as an unconstrained NVML on the node shows them."""
import os


class NVMLError(Exception):
    pass


class _Memory:  # pynvml's c_nvmlMemory_t: total, free, used (bytes)
    total = free = 16 * 1024**3
    used = 0


def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return int(os.environ.get("FAKE_NVML_GPUS", "4"))
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetUUID(h): return f"GPU-fake-{h}"
def nvmlDeviceGetName(h): return "Fake GPU"
def nvmlDeviceGetMemoryInfo(h): return _Memory()
def nvmlDeviceGetArchitecture(h): return 7
'''


def test_fetcher_info_in_a_slurm_task_shows_only_the_tasks_gpu(
    env: Env, engine: Any, slurm: dict[str, str], tmp_path: Path
) -> None:
    # Given a node whose NVML shows four GPUs (a fake pynvml), and fetcher settings without GPUS
    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    environ = {
        **slurm,
        "PYTHONPATH": str(fake),
        "API_URL": env.mock.url,
        "ACCESS_TOKEN": TOKEN,
        "PATH_BASE": str(env.base),
    }
    # When `fetcher info` runs in three tasks that asked for one GPU each
    array = sbatch(
        environ,
        "--array=1-3",
        "--gres=gpu:1",
        "--export=ALL",
        "--time=5",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/slurm-%A_%a.out",
        "--wrap",
        'echo "SLURM_JOB_GPUS=$SLURM_JOB_GPUS"; fetcher info',
    )
    records = wait_for_array(slurm, array, 3, timeout_s=120)
    logs = task_logs(tmp_path)
    assert all(r["ExitCode"] == "0:0" for r in records), (records, logs)
    # Then each task's fetcher offers exactly the GPU Slurm gave that task, and one job at a time
    for name, log in logs.items():
        first, _, rest = log.partition("\n")
        slurm_gpus = first.removeprefix("SLURM_JOB_GPUS=")
        info, _ = json.JSONDecoder().raw_decode(rest[rest.index("{") :])
        assert [g["uuid"] for g in info["gpus"]] == [f"GPU-fake-{slurm_gpus}"], (name, log)
        assert info["parallel_jobs"] == 1 and info["first_claim"]["gpu_mem"] == 16384
