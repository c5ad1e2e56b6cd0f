"""Hostile jobs on a real engine: nothing a job does in its directory may reach the host outside it,
hang a slot, or stop the daemon from running (and starting again)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID
from tests.helpers import IMAGE, Env, fetcher_id, statuses, wait_for

pytestmark = pytest.mark.docker

LOG_DIR = {"output": "output", "log": "log"}


def run_bounded(env: Env, engine: Any, timeout_s: float = 90, **settings: Any) -> int:
    """Run the daemon until idle; fail (instead of hanging the suite) if it does not end in time."""
    daemon = build_daemon(env.settings(**settings), exit_when_idle=True, docker_client=engine)
    out: dict[str, int] = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", daemon.run()), daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        daemon.worker.request_force_stop()
        t.join(30)
        pytest.fail(f"the daemon hung for more than {timeout_s} s")
    return out["rc"]


def only_state_left(env: Env) -> None:
    assert [p.name for p in env.base.iterdir()] == [".fetcher"], list(env.base.iterdir())


def starts_again(env: Env, engine: Any) -> None:
    """After the attack, a new daemon on the same PATH_BASE starts and runs a job to its end."""
    after = env.submit(["echo still-fine"], files_up={})
    assert run_bounded(env, engine) == 0
    assert after.status.value == "finished", after.history
    only_state_left(env)


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlinked_container_log_does_not_write_through_the_link(
    env: Env, engine: Any, target_exists: bool
) -> None:
    # Given a host file (or a place for a new one) and a job that points its log file at it
    target = env.root / "host-canary.txt"
    if target_exists:
        target.write_bytes(b"precious")
    job = env.submit(
        [f"mkdir -p /files/log && ln -sf {target} /files/log/container.log && echo hostile-bytes"],
        files_up=LOG_DIR,
    )
    # When the job runs and ends
    assert run_bounded(env, engine) == 0
    # Then the host file is untouched (or still absent), and the job's real log was uploaded
    if target_exists:
        assert target.read_bytes() == b"precious"
    else:
        assert not target.exists() and not target.is_symlink()
    assert job.status.value == "finished", job.history
    log = Path(job.paths_upload["log"], "log", "container.log")
    assert "hostile-bytes" in log.read_text()
    only_state_left(env)
    starts_again(env, engine)


@pytest.mark.parametrize(
    "make",
    [
        "mkfifo /files/log/container.log",
        "mknod /files/log/container.log c 1 3 || mkfifo /files/log/container.log",
        "mkfifo /files/output/pipe",
        "mknod /files/output/zero c 1 5 || mkfifo /files/output/zero",
        "mkfifo /files/output/pipe.part",
    ],
)
def test_fifos_and_device_nodes_left_by_a_job_do_not_hang_the_slot(
    env: Env, engine: Any, make: str
) -> None:
    job = env.submit(["mkdir -p /files/log /files/output", "&&", make, "&&", "echo made"])
    follower = env.submit(["echo next"])
    assert run_bounded(env, engine, timeout_s=60) == 0
    assert job.status.value == "finished", job.history
    assert all(u["filename"] not in ("pipe", "zero", "pipe.part") for u in job.uploads)
    assert follower.status.value == "finished"
    only_state_left(env)
    starts_again(env, engine)


# 3000 nested directories, built from the bottom (a shell's `cd` would hit PATH_MAX first)
DEEP = (
    "mkdir -p /files/output && cd /files/output && echo bottom > f && mkdir d && mv f d/ && i=0; "
    "while [ $i -lt 3000 ]; do mkdir n && mv d n/ && mv n d || exit 9; i=$((i+1)); done; "
    "echo shallow > /files/output/top.txt"
)


def test_an_output_tree_3000_levels_deep_ends_with_a_status_and_is_removed(
    env: Env, engine: Any
) -> None:
    job = env.submit([DEEP])
    assert run_bounded(env, engine, timeout_s=180) == 0
    assert job.status.value == "finished", job.history
    assert ("output", "output", "top.txt") in {
        (u["type"], u["base_path"], u["filename"]) for u in job.uploads
    }
    only_state_left(env)
    starts_again(env, engine)
    # and the daemon starts again on the same PATH_BASE
    again = env.submit(["true"])
    assert run_bounded(env, engine) == 0
    assert again.status.value == "finished"


def test_a_deep_tree_left_by_a_killed_fetcher_does_not_stop_the_next_start(
    env: Env, engine: Any
) -> None:
    from tests.integration.test_daemon import fetcher_process

    job = env.submit([DEEP, "&&", "touch /files/tree-done", "&&", "sleep 2"])
    fid = fetcher_id("deep")
    proc = fetcher_process(env, fid)
    try:
        wait_for(lambda: (env.base / str(job.id) / "tree-done").exists(), 120, "the deep tree")
    finally:
        proc.kill()
        proc.wait(10)
    # When the fetcher starts again (same FETCHER_ID, so it finds its own leftovers)
    assert run_bounded(env, engine, timeout_s=180, fetcher_id=fid) == 0
    assert job.status.value in ("finished", "queued"), statuses(job)
    only_state_left(env)
    starts_again(env, engine)


def test_a_symlink_at_the_job_directory_is_never_followed(env: Env, engine: Any) -> None:
    # Given PATH_BASE/<queue id> already exists as a link to a directory elsewhere on the host
    victim = env.root / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    job = env.submit(["echo ok > /files/output/o.txt"])
    (env.base / str(job.id)).symlink_to(victim)
    # When the job runs (and its directory is cleaned up, also by the purge container)
    assert run_bounded(env, engine) == 0
    # Then the link's target is untouched, and the job ran in a real directory of its own
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert job.status.value == "finished", job.history
    only_state_left(env)
    starts_again(env, engine)


def test_job_containers_have_a_process_limit_and_bounded_engine_logs(env: Env, engine: Any) -> None:
    env.submit(["sleep 4"])
    fid = fetcher_id("limits")
    seen: dict[str, Any] = {}

    def inspect() -> bool:
        try:  # the container may end and be removed while it is listed
            found = engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})
        except docker.errors.NotFound:
            return False
        for c in found:
            seen.update(c.attrs["HostConfig"])
            return True
        return False

    t = threading.Thread(
        target=lambda: run_bounded(env, engine, job_pids_limit=256, fetcher_id=fid), daemon=True
    )
    t.start()
    wait_for(inspect, 30, "the job's container")
    t.join(60)
    assert seen["PidsLimit"] == 256
    assert seen["LogConfig"]["Type"] == "json-file"
    assert "max-size" in seen["LogConfig"]["Config"]
    assert "MKNOD" in (seen.get("CapDrop") or [])
    assert seen["Privileged"] is False


def test_a_fork_bomb_is_held_by_the_process_limit(env: Env, engine: Any) -> None:
    # Given a job that forks without end for a while, and a process limit of 64
    job = env.submit(
        ["bomb() { bomb | bomb & }; bomb; sleep 6; echo survived"], files_up={"log": "log"}
    )
    fid = fetcher_id("bomb")
    started = time.monotonic()
    rc = run_bounded(env, engine, timeout_s=120, job_pids_limit=64, fetcher_id=fid)
    # Then the job's forks hit the limit, the box stays usable (this test process can still fork),
    # and the job's own shell went on to its end
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert rc == 0 and time.monotonic() - started < 60
    assert job.status.value == "finished", job.history
    log = Path(job.paths_upload["log"], "log", "container.log").read_text()
    assert "can't fork" in log and "survived" in log
    only_state_left(env)
    starts_again(env, engine)


def test_a_job_leaving_more_outputs_than_allowed_ends_error_and_costs_no_upload_storm(
    env: Env, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job that leaves 3000 empty files and 3000 links (a stand-in for millions)
    job = env.submit(
        [
            "cd /files/output && i=0; while [ $i -lt 3000 ]; do : > f$i; ln -s /etc/passwd l$i;"
            " i=$((i+1)); done; echo made-them"
        ],
        files_up=LOG_DIR,
    )
    # When it runs under a limit of 1000 entries
    with caplog.at_level("INFO"):
        assert run_bounded(env, engine, job_output_max_files=1000) == 0
    # Then it ends `error` saying how it ended and which setting it broke, only its log is uploaded
    assert job.status.value == "error", job.history
    details = job.history[-1]["runtime_details"]
    lines = details.splitlines()
    assert lines[0] == "exit_code: 0"
    assert lines[1].startswith("outputs: more than 1000 files and directories")
    assert "JOB_OUTPUT_MAX_FILES" in lines[1]
    assert "made-them" in details
    stored = Path(job.paths_upload["output"])
    assert not stored.exists() or not any(stored.rglob("*"))
    assert "made-them" in Path(job.paths_upload["log"], "log", "container.log").read_text()
    # and the links it left were not logged one by one
    skipped = [r for r in caplog.records if "not uploading" in r.getMessage()]
    assert len(skipped) <= 21
    only_state_left(env)


def test_an_ended_container_the_engine_will_not_remove_is_removed_later_and_holds_no_slot(
    env: Env, engine: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A container that ended holds no GPU: its share goes to the next job at once (a container
    # that may still run keeps its share: see the worker's unit tests). Its removal is retried
    # until it is gone, also before the daemon exits: nothing is left behind.
    import docker.api.client

    from fetcher import leftovers

    monkeypatch.setattr(leftovers, "LEFTOVER_RETRY_S", 1.0)
    real_remove = docker.api.client.APIClient.remove_container
    refused: list[str] = []

    def remove_once_refused(self: Any, container: str, **kwargs: Any) -> Any:
        if not refused:  # the engine refuses the first removal only
            refused.append(container)
            raise docker.errors.APIError("engine busy (simulated)")
        return real_remove(self, container, **kwargs)

    monkeypatch.setattr(docker.api.client.APIClient, "remove_container", remove_once_refused)
    fid = fetcher_id("leftover")
    first = env.submit(["echo first"])
    second = env.submit(["echo second"])
    with caplog.at_level("INFO"):
        assert run_bounded(env, engine, max_parallel_jobs=1, fetcher_id=fid) == 0
    assert first.status.value == "finished" and second.status.value == "finished"
    lines = [r.getMessage() for r in caplog.records]
    held = lines.index(
        "job 1: its container is still on the engine; it has ended and holds nothing; it is"
        " removed (tried again every 1 s)"
    )
    freed = lines.index("job 1 (ended, #1): its container is removed at last")
    stopped = lines.index("worker: stopped")
    second_started = next(i for i, m in enumerate(lines) if m.startswith("job 2: started"))
    assert held < freed < stopped and second_started < freed
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})


def test_a_job_stating_no_hardware_gets_one_slots_share_not_2000_mb(env: Env, engine: Any) -> None:
    # Review finding (against the real server): the user-facing API's jobs leave `hardware` null;
    # they were held to JOB_DEFAULT_MEMORY_MB (2000 MB) and one core, so a DECODE training would be
    # killed for memory where the upstream fetcher sets no limit at all. Now such a job gets one
    # slot's share (all of a one-GPU box), counted and enforced alike.
    from fetcher.models import HardwareSpecs

    stated = env.submit(["sleep 3"], hardware=HardwareSpecs(cpu_cores=1, memory=64))
    unstated = env.submit_raw(
        {"app": {"cmd": ["sleep 3"]}, "handler": {"image_url": IMAGE}, "hardware": None}
    )
    fid = fetcher_id("hw")
    seen: dict[str, dict[str, Any]] = {}

    def inspect() -> bool:
        try:
            found = engine.containers.list(all=True, filters={"label": f"{LABEL_ID}={fid}"})
        except docker.errors.NotFound:
            return False
        for c in found:
            seen[c.name.split("-")[2]] = c.attrs["HostConfig"]
        return len(seen) == 2

    t = threading.Thread(
        target=lambda: run_bounded(
            env,
            engine,
            fetcher_id=fid,
            max_parallel_jobs=2,
            memory_mb=3000,
            cpu_cores=2,
            job_default_memory_mb=None,
            job_default_cpu_cores=None,
        ),
        daemon=True,
    )
    t.start()
    wait_for(inspect, 30, "both containers")
    t.join(60)
    assert stated.status.value == "finished" and unstated.status.value == "finished"
    assert seen["1"]["Memory"] == 64 * 2**20 and seen["1"]["NanoCpus"] == 10**9
    assert seen["2"]["Memory"] == 1500 * 2**20 and seen["2"]["NanoCpus"] == 10**9
