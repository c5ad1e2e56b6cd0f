"""Hostile jobs on a real engine: nothing a job does in its directory may reach the host outside
it, hang a slot, or stop the daemon from running (and starting again); its container is bounded
(processes, engine logs, privileges, outputs), and a job stating no hardware gets one slot's
share."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from fetcher.daemon import build_daemon
from fetcher.engine.container import LABEL_ID, ContainerOptions, JobContainer, Limits
from fetcher.gpu.nvml import Nvml
from fetcher.job.workspace import Layout, Workspace
from fetcher.models import JobSpecs
from tests.fakes.nvml import FakeGpu, FakeMig, FakeNvml
from tests.helpers import (
    DEEP_TREE,
    IMAGE,
    Env,
    daemon_in_thread,
    fetcher_id,
    hostile_job,
    only_state_left,
    run_until_idle,
    starts_again,
    wait_for,
)

pytestmark = pytest.mark.docker
LOG_DIR = {"output": "output", "log": "log"}


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
    assert run_until_idle(env.settings(), engine) == 0
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
    assert run_until_idle(env.settings(), engine, timeout_s=60) == 0
    assert job.status.value == "finished", job.history
    assert all(u["filename"] not in ("pipe", "zero", "pipe.part") for u in job.uploads)
    assert follower.status.value == "finished"
    only_state_left(env)
    starts_again(env, engine)


def test_an_output_tree_3000_levels_deep_ends_with_a_status_and_is_removed(
    env: Env, engine: Any
) -> None:
    job = env.submit([DEEP_TREE])
    assert run_until_idle(env.settings(), engine, timeout_s=180) == 0
    assert job.status.value == "finished", job.history
    assert ("output", "output", "top.txt") in {
        (u["type"], u["base_path"], u["filename"]) for u in job.uploads
    }
    only_state_left(env)
    starts_again(env, engine)
    # and the daemon starts again on the same PATH_BASE
    again = env.submit(["true"])
    assert run_until_idle(env.settings(), engine) == 0
    assert again.status.value == "finished"


def test_a_symlink_at_the_job_directory_is_never_followed(env: Env, engine: Any) -> None:
    # Given PATH_BASE/<queue id> already exists as a link to a directory elsewhere on the host
    victim = env.root / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    job = env.submit(["echo ok > /files/output/o.txt"])
    (env.base / str(job.id)).symlink_to(victim)
    # When the job runs (and its directory is cleaned up, also by the purge container)
    assert run_until_idle(env.settings(), engine) == 0
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

    settings = env.settings(job_pids_limit=256, fetcher_id=fid)
    with daemon_in_thread(build_daemon(settings, exit_when_idle=True, docker_client=engine)):
        wait_for(inspect, 30, "the job's container")
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
    rc = run_until_idle(env.settings(job_pids_limit=64, fetcher_id=fid), engine, timeout_s=120)
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
        assert run_until_idle(env.settings(job_output_max_files=1000), engine) == 0
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


def test_a_job_stating_no_hardware_gets_one_slots_share_not_2000_mb(env: Env, engine: Any) -> None:
    """A job that leaves `hardware` null (as the user-facing API's jobs do) gets one slot's share,
    counted and enforced alike: not JOB_DEFAULT_MEMORY_MB (2000 MB) and one core, which would kill
    a DECODE training for memory where the upstream fetcher sets no limit at all."""
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

    settings = env.settings(
        fetcher_id=fid,
        max_parallel_jobs=2,
        memory_mb=3000,
        cpu_cores=2,
        job_default_memory_mb=None,
        job_default_cpu_cores=None,
    )
    with daemon_in_thread(build_daemon(settings, exit_when_idle=True, docker_client=engine)):
        wait_for(inspect, 30, "both containers")
    assert stated.status.value == "finished" and unstated.status.value == "finished"
    assert seen["1"]["Memory"] == 64 * 2**20 and seen["1"]["NanoCpus"] == 10**9
    assert seen["2"]["Memory"] == 1500 * 2**20 and seen["2"]["NanoCpus"] == 10**9


def test_a_job_output_file_whose_name_is_not_utf8_ends_the_job_honestly(
    env: Env, engine: Any
) -> None:
    """A file name with a byte that is not UTF-8 (legal on Linux) in a sub-directory of an output
    directory. Expected: skipped (or the job's `error`); never a hand-back of a job that is at
    fault."""
    j = env.submit(
        [
            "mkdir -p /files/output/sub && echo x > \"$(printf '/files/output/sub/a\\377b')\""
            " && echo ok > /files/output/fine.txt"
        ]
    )
    assert run_until_idle(env.settings(), engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "finished", (j.status.value, details[:300])
    uploaded = {(u["base_path"], u["filename"]) for u in j.uploads}
    assert ("output", "fine.txt") in uploaded
    assert not any("sub" in base for base, _ in uploaded)


def test_a_job_output_file_whose_name_is_not_utf8_at_the_top_ends_finished(
    env: Env, engine: Any
) -> None:
    j = env.submit(["mkdir -p /files/output && echo x > \"$(printf '/files/output/a\\377b')\""])
    assert run_until_idle(env.settings(), engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "finished", (j.status.value, details[:300])


@pytest.mark.parametrize(
    "swap",
    [
        "rm -rf /files/output && ln -s {canary} /files/output",
        "rm -rf /files/a && ln -s {canary} /files/a",
        "rm -rf /files/output && ln -s ../../.. /files/output",
        "rm -rf /files/a && mkfifo /files/a",
    ],
    ids=["files_up-dir", "parent-of-files_up-dir", "relative-up", "fifo-parent"],
)
def test_an_output_directory_swapped_for_a_link_is_not_followed(
    env: Env, engine: Any, swap: str
) -> None:
    canary = env.root / "canary-dir"
    (canary / "b").mkdir(parents=True)
    (canary / "secret.txt").write_text("host secret")
    (canary / "b" / "secret2.txt").write_text("host secret 2")
    j = env.submit_raw(
        hostile_job(
            swap.format(canary=canary),
            files_up={"output": "output", "artifact": "a/b", "log": "log"},
        )
    )
    assert run_until_idle(env.settings(), engine) == 0
    names = {u["filename"] for u in j.uploads}
    assert "secret.txt" not in names and "secret2.txt" not in names, names
    assert (canary / "secret.txt").read_text() == "host secret"
    assert (canary / "b" / "secret2.txt").read_text() == "host secret 2"
    assert j.status.value == "finished", j.history[-1]
    only_state_left(env)


@pytest.mark.parametrize(
    "cmd",
    [
        "(trap '' TERM HUP; sleep 1000) & (setsid sleep 1000 &) ; echo bye",
        "chmod -R 000 /files/output /files/log; chmod 000 /files; echo locked",
        "mkdir -p /files/output/d && touch /files/output/d/f && chmod 000 /files/output/d && chattr +i /files/output/d/f 2>&1; echo tried",
        "mkdir -p /files/output && ln /files/output/../output /files/output/hl 2>&1; echo x > /files/output/f && ln /files/output/f /files/output/f2; echo hard",
    ],
    ids=["background", "chmod-000", "chattr", "hardlinks"],
)
def test_a_job_that_leaves_processes_or_locks_its_files_is_cleaned_up(
    env: Env, engine: Any, cmd: str
) -> None:
    j = env.submit([cmd])
    assert run_until_idle(env.settings(), engine, timeout_s=60) == 0
    assert j.status.value == "finished", j.history[-1]
    only_state_left(env)


def test_a_job_ignoring_sigterm_past_the_time_limit_is_killed(env: Env, engine: Any) -> None:
    j = env.submit(["trap '' TERM; (trap '' TERM; sleep 1000) & sleep 1000"])
    t = time.monotonic()
    assert (
        run_until_idle(env.settings(job_time_limit_s=2, stop_grace_s=1), engine, timeout_s=60) == 0
    )
    took = time.monotonic() - t
    assert j.status.value == "error" and took < 20
    only_state_left(env)


pytestmark = pytest.mark.docker


def test_a_mig_instance_is_requested_by_its_own_uuid(engine: Any, tmp_path: Path) -> None:
    # Given an H100 with two MIG instances, and a job given the second one
    fake = FakeNvml([FakeGpu.h100()])
    fake.enable_mig(0, [FakeMig(1, memory_mib=9856), FakeMig(2, memory_mib=9856)])
    nvml = Nvml(fake)
    assert nvml.open()
    _first, second = nvml.devices()
    ws = Workspace("11", tmp_path, tmp_path)
    ws.create(Layout((), ()))
    spec = JobSpecs.model_validate({"handler": {"image_url": IMAGE}, "app": {"cmd": ["true"]}})
    job = JobContainer(engine, "11", fetcher_id("mig"), ContainerOptions(shm_size="64m"))
    args = job._create_args(spec, ws, [second.uuid], Limits(1, 64))
    # When its container is created (not started)
    container = engine.containers.create(IMAGE, **args)
    try:
        # Then the engine holds exactly one request, for that MIG instance
        container.reload()
        (request,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia"
        assert request["DeviceIDs"] == [second.uuid] and second.uuid.startswith("MIG-")
        assert request["Capabilities"] == [["gpu"]]
        assert container.labels["org.decode-opencloud.fetcher.gpus"] == second.uuid
    finally:
        container.remove(force=True)


def test_a_job_given_no_gpu_gets_none_even_from_an_image_asking_for_all(
    engine: Any, tmp_path: Path
) -> None:
    # CUDA images carry ENV NVIDIA_VISIBLE_DEVICES=all: on a box whose default runtime is nvidia,
    # a container without a device request would get every GPU (NVIDIA/nvidia-container-toolkit
    # #451); the job's own env may ask for all as well
    ws = Workspace("12", tmp_path, tmp_path)
    ws.create(Layout((), ()))
    spec = JobSpecs.model_validate(
        {
            "handler": {"image_url": IMAGE},
            "app": {"cmd": ["true"], "env": {"NVIDIA_VISIBLE_DEVICES": "all"}},
        }
    )
    job = JobContainer(engine, "12", fetcher_id("nogpu"), ContainerOptions(shm_size="64m"))
    args = job._create_args(spec, ws, [], Limits(1, 64))
    # When its container is created (not started)
    container = engine.containers.create(IMAGE, **args)
    try:
        # Then it has no device request, and the variable the nvidia runtime reads says `void`
        container.reload()
        assert not container.attrs["HostConfig"].get("DeviceRequests")
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    finally:
        container.remove(force=True)
