"""One job end to end: real HTTP to mock_api, a real Docker engine."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.models import HardwareSpecs
from tests.helpers import SESSION, Env, fetcher_id, sequence, statuses

pytestmark = pytest.mark.docker
EVERY_STATUS = ["queued", "pulled", "preprocessing", "running", "postprocessing", "finished"]


def run_until_idle(env: Env, engine: Any, **settings: Any) -> None:
    daemon = build_daemon(env.settings(**settings), exit_when_idle=True, docker_client=engine)
    assert daemon.run() == 0


def test_job_reads_inputs_runs_shell_and_uploads_nested_outputs(env: Env, engine: Any) -> None:
    # Given a job whose command reads inputs under /files, uses $(...) and &&, reads an env var,
    # and writes outputs in nested directories
    yaml_id = env.input_file("user1/config/param.yaml", b"lr: 0.1\n")
    calib_id = env.input_file("user1/data/calib.bin", bytes(range(256)) * 100)
    job = env.submit(
        [
            "cd /files",
            "&&",
            "mkdir -p output/a/b log",
            "&&",
            "cp $(find /files/config -name '*.yaml' | head -n 1) output/a/b/param-copy.yaml",
            "&&",
            "echo seed=$DECODE_SEED > output/a/seed.txt",
            "&&",
            "wc -c < data/sub/calib.bin > output/size.txt",
            "&&",
            "echo done-ok",
        ],
        files_down={"config/param.yaml": yaml_id, "data/sub/calib.bin": calib_id},
        env={"DECODE_SEED": "42"},
    )
    # When the fetcher runs until no job is left
    run_until_idle(env, engine)
    # Then the job is finished and every output is in the store at the right place
    assert job.status.value == "finished", job.history
    assert sequence(job) == EVERY_STATUS
    # (the upstream fetcher's layout: base_path starts with the files_up directory itself)
    out = Path(job.paths_upload["output"], "output")
    assert (out / "a/b/param-copy.yaml").read_bytes() == b"lr: 0.1\n"
    assert (out / "a/seed.txt").read_text() == "seed=42\n"
    assert (out / "size.txt").read_text().strip() == "25600"
    logs = Path(job.paths_upload["log"], "log", "container.log").read_text()
    assert "done-ok" in logs
    assert {(u["type"], u["base_path"], u["filename"]) for u in job.uploads} == {
        ("output", "output/a/b", "param-copy.yaml"),
        ("output", "output/a", "seed.txt"),
        ("output", "output", "size.txt"),
        ("log", "log", "container.log"),
    }
    assert list(env.base.iterdir()) == [env.base / ".fetcher"], "job directory left behind"


def test_exit_code_3_is_an_error_with_the_log_tail(env: Env, engine: Any) -> None:
    job = env.submit(["echo first-line", "&&", "echo something broke >&2", "&&", "exit 3"])
    run_until_idle(env, engine)
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("exit_code: 3")
    assert "something broke" in details and "b'" not in details


def containers_of(engine: Any, job_id: int) -> list[Any]:
    from fetcher.engine.container import LABEL_ID, LABEL_JOB

    found = engine.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
    return [c for c in found if (c.get("Labels") or {}).get(LABEL_ID, "").startswith(SESSION)]


def start_daemon_thread(env: Env, engine: Any, **settings: Any) -> tuple[Any, Any]:
    import threading

    daemon = build_daemon(env.settings(**settings), exit_when_idle=True, docker_client=engine)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", daemon.run()), daemon=True)
    thread.start()
    return daemon, (thread, result)


def test_job_deleted_mid_run_is_stopped_within_one_keepalive_interval(
    env: Env, engine: Any
) -> None:
    import time

    from tests.helpers import wait_for

    # Given a long job that is running
    job = env.submit(["echo started", "&&", "sleep 300"])
    _daemon, (thread, result) = start_daemon_thread(
        env, engine, keepalive_interval_s=1.0, stop_grace_s=1.0
    )
    wait_for(
        lambda: job.status.value == "running" and containers_of(engine, job.id), 30, "job running"
    )
    # When its user deletes it
    env.state.delete(job.id)
    deleted_at = time.monotonic()
    # Then the container is gone within one keep-alive interval (plus the stop itself)
    wait_for(lambda: not containers_of(engine, job.id), 10, "container removed")
    assert time.monotonic() - deleted_at < 1.0 + 1.0 + 1.5
    thread.join(30)
    assert result["rc"] == 0
    assert job.uploads == [], "a gone job is not uploaded"
    assert (
        job.status.value == "running" and job.history[-1]["status"] == "running"
    )  # no status after the 404
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


def test_missing_image_under_never_is_an_error_with_the_reason(env: Env, engine: Any) -> None:
    job = env.submit(["true"], image="fetcher-test/not-there:1")
    run_until_idle(env, engine, image_pull_policy="never")
    assert job.status.value == "error"
    assert (
        "not present" in job.history[-1]["runtime_details"]
        and "never" in job.history[-1]["runtime_details"]
    )


def test_failed_pull_from_local_registry_is_an_error_with_dockers_message(
    env: Env, engine: Any
) -> None:
    from tests.helpers import REGISTRY_IMAGE

    missing = REGISTRY_IMAGE.rsplit(":", 1)[0] + ":no-such-tag"
    job = env.submit(["true"], image=missing)
    run_until_idle(env, engine, image_pull_policy="always")
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("pull of ") and (
        "manifest unknown" in details or "not found" in details
    ), details


def test_pull_from_local_registry_then_run(env: Env, engine: Any) -> None:
    from tests.helpers import REGISTRY_IMAGE

    with contextlib.suppress(Exception):
        engine.images.remove(REGISTRY_IMAGE)
    job = env.submit(["echo pulled-and-ran"], image=REGISTRY_IMAGE)
    run_until_idle(env, engine, image_pull_policy="if-not-present")
    assert job.status.value == "finished", job.history
    engine.images.get(REGISTRY_IMAGE)


@pytest.mark.parametrize("on_failure", ["hand-back", "error"])
def test_gpu_request_on_a_host_without_gpu_runtime_is_the_workers_trouble(
    env: Env, engine: Any, on_failure: str
) -> None:
    from tests.helpers import FakeNvml

    # Given NVML (faked) shows one GPU, but this engine has no NVIDIA runtime
    nvml = FakeNvml([("GPU-11111111-2222-3333-4444-555555555555", "NVIDIA T4", 15360, 6)])
    job = env.submit(["true"], hardware=HardwareSpecs(gpu_mem=1000, memory=64))
    daemon = build_daemon(
        env.settings(on_worker_failure=on_failure),
        exit_when_idle=True,
        docker_client=engine,
        nvml=nvml,
    )
    assert daemon.run() == 0
    # Then the engine's own refusal of the device request is the reason; the box, not the job, is
    # at fault: the job is handed back (or, if so configured, `error`); no `created` container stays
    expected = "queued" if on_failure == "hand-back" else "error"
    assert job.status.value == expected, statuses(job)
    assert 'could not select device driver "nvidia"' in job.history[-1]["runtime_details"]
    assert "running" not in statuses(job)
    assert job.claims[0]["gpu_mem"] == 15360 and job.claims[0]["gpu_model"] == "NVIDIA T4"


@pytest.mark.parametrize("key", ["../escape.txt", "/tmp/abs-escape.txt", "a/../../escape.txt"])
def test_path_escaping_files_down_is_an_error_and_writes_nothing_outside(
    env: Env, engine: Any, key: str
) -> None:
    fid = env.input_file("user1/in/x.txt", b"x")
    job = env.submit(["true"], files_down={"ok.txt": fid, key: fid})
    before = {p for p in env.root.rglob("*")}
    run_until_idle(env, engine)
    assert job.status.value == "error"
    assert "files_down" in job.history[-1]["runtime_details"]
    created = {p for p in env.root.rglob("*")} - before
    assert not [p for p in created if "escape" in p.name]
    assert not Path("/tmp/abs-escape.txt").exists()
    assert job.history[-1]["status"] == "error" and "running" not in statuses(job)


def test_path_escaping_files_up_is_an_error(env: Env, engine: Any) -> None:
    job = env.submit(["true"], files_up={"output": "../../"})
    run_until_idle(env, engine)
    assert job.status.value == "error" and "files_up" in job.history[-1]["runtime_details"]


def test_null_cmd_runs_the_images_own_cmd(env: Env, engine: Any) -> None:
    job = env.submit(None)
    run_until_idle(env, engine)
    assert job.status.value == "finished", job.history


def test_symlinks_written_by_the_job_are_not_uploaded(env: Env, engine: Any) -> None:
    job = env.submit(
        [
            "mkdir -p /files/output",
            "&&",
            "ln -s /etc/passwd /files/output/passwd",
            "&&",
            "echo ok > /files/output/real.txt",
        ]
    )
    run_until_idle(env, engine)
    assert job.status.value == "finished"
    assert [u["filename"] for u in job.uploads if u["type"] == "output"] == ["real.txt"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malformed_job_spec_from_the_server_is_reported_and_the_daemon_goes_on(
    env: Env, engine: Any
) -> None:
    bad = env.submit(["true"])
    good = env.submit(["true"])
    with env.state.lock:  # the server hands out a spec with a wrong type in it
        bad.job["app"]["cmd"] = "not-a-list"
    run_until_idle(env, engine)
    assert bad.status.value == "error" and "app.cmd" in bad.history[-1]["runtime_details"]
    assert good.status.value == "finished"


def test_stage_functions_are_usable_on_their_own(env: Env, engine: Any, tmp_path: Path) -> None:
    import threading

    from fetcher.api.client import WorkerApi
    from fetcher.cancel import Cancel
    from fetcher.engine.container import ContainerOptions, JobContainer, Limits
    from fetcher.job.transfer import download_inputs, upload_outputs
    from fetcher.job.workspace import Workspace, plan_layout
    from fetcher.models import ClaimOffer

    fid = env.input_file("user1/in/in.txt", b"42")
    job = env.submit(["cat /files/in.txt > /files/output/out.txt"], files_down={"in.txt": fid})
    api = WorkerApi.from_settings(env.settings())
    jid, spec = next(iter(api.claim_jobs(ClaimOffer(memory=1000, cpu_cores=1)).jobs.items()))
    layout = plan_layout(jid, spec)
    ws = Workspace(jid, tmp_path, tmp_path)
    ws.create(layout)
    stop = threading.Event()
    download_inputs(api.files, jid, layout, ws, cancel=stop)
    box = JobContainer(engine, jid, fetcher_id("standalone"), ContainerOptions(shm_size="64m"))
    try:
        box.start(spec, ws, [], Limits())
        assert box.wait(Cancel()).exit_code == 0
    finally:
        box.remove()
    upload_outputs(api.files, jid, layout, ws, container_log=None, cancel=stop)
    assert Path(job.paths_upload["output"], "output", "out.txt").read_text() == "42"
    assert ws.remove() and not ws.path.exists()


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
    run_until_idle(env, engine)
    # Then a container emptied the directory as root, and it is gone
    assert job.status.value == "finished"
    assert seen_at_retry[1] == [], "the purge container emptied the job directory"
    assert list(env.base.iterdir()) == [env.base / ".fetcher"]


def test_an_upload_failure_after_the_container_ended_keeps_the_exit_code(
    env: Env, engine: Any
) -> None:
    job = env.submit(
        ["mkdir -p /files/output", "&&", "echo x > /files/output/a.txt", "&&", "exit 4"]
    )
    with env.state.lock:
        job.paths_upload["output"] = "/proc/no-such-place"  # the store refuses the upload (403)
    run_until_idle(env, engine)
    details = job.history[-1]["runtime_details"]
    assert job.status.value == "error" and details.startswith("exit_code: 4\n"), details
    assert "output output/a.txt" in details.splitlines()[1]


def test_a_job_past_the_local_time_limit_is_stopped_and_reported(env: Env, engine: Any) -> None:
    import time

    job = env.submit(["echo working", "&&", "sleep 300"])
    started = time.monotonic()
    run_until_idle(env, engine, job_time_limit_s=2, stop_grace_s=1)
    assert time.monotonic() - started < 20
    assert job.status.value == "error", statuses(job)
    first, *rest = job.history[-1]["runtime_details"].splitlines()
    assert first.startswith("exit_code: ") and "local time limit of 2 s" in first, first
    assert "working" in rest


def test_a_short_job_still_shows_every_status(env: Env, engine: Any) -> None:
    job = env.submit(["true"], files_up={})
    run_until_idle(env, engine, keepalive_interval_s=60)
    assert sequence(job) == EVERY_STATUS


def test_auto_pulls_a_latest_image_again_instead_of_running_a_stale_one(
    env: Env, engine: Any
) -> None:
    # Review finding (against the real server): with `if-not-present` a box kept running the
    # `decode:latest` it pulled once, for ever; the upstream fetcher always pulls.
    from tests.helpers import IMAGE, REGISTRY_IMAGE

    latest = REGISTRY_IMAGE.rsplit(":", 1)[0] + ":latest"
    fresh = engine.images.get(IMAGE)
    fresh.tag(latest)
    engine.images.push(latest)
    stale = engine.images.get("fetcher-test/pycopy:3.11")
    stale.tag(latest)  # the box's copy is an older, other image
    try:
        job = env.submit(["echo ran"], image=latest)
        run_until_idle(env, engine)  # IMAGE_PULL_POLICY: auto, the default
        assert job.status.value == "finished", job.history
        assert engine.images.get(latest).id == fresh.id
        # an image by tag (not latest) present on the box is not pulled: IMAGE is in no registry
        local = env.submit(["echo ran"], image=IMAGE)
        run_until_idle(env, engine)
        assert local.status.value == "finished", local.history
    finally:
        with contextlib.suppress(Exception):
            engine.images.remove(latest)
