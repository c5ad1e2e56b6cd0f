"""One job end to end: real HTTP to mock_api, a real Docker engine. Inputs in, the command run,
nested outputs up, every status in order; the job's own failures (exit codes, specs it cannot run,
paths that escape) as `error` with the reason; jobs shaped like DECODE's own (train, then fit on the
stored artifacts; long logs)."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    IMAGE,
    Env,
    decode_job,
    fetcher_id,
    hostile_job,
    only_state_left,
    run_until_idle,
    sequence,
    statuses,
)

pytestmark = pytest.mark.docker
EVERY_STATUS = ["queued", "pulled", "preprocessing", "running", "postprocessing", "finished"]


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
    assert run_until_idle(env.settings(), engine) == 0
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
    assert run_until_idle(env.settings(), engine) == 0
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("exit_code: 3")
    assert "something broke" in details and "b'" not in details


@pytest.mark.parametrize("key", ["../escape.txt", "/tmp/abs-escape.txt", "a/../../escape.txt"])
def test_path_escaping_files_down_is_an_error_and_writes_nothing_outside(
    env: Env, engine: Any, key: str
) -> None:
    fid = env.input_file("user1/in/x.txt", b"x")
    job = env.submit(["true"], files_down={"ok.txt": fid, key: fid})
    before = {p for p in env.root.rglob("*")}
    assert run_until_idle(env.settings(), engine) == 0
    assert job.status.value == "error"
    assert "files_down" in job.history[-1]["runtime_details"]
    created = {p for p in env.root.rglob("*")} - before
    assert not [p for p in created if "escape" in p.name]
    assert not Path("/tmp/abs-escape.txt").exists()
    assert job.history[-1]["status"] == "error" and "running" not in statuses(job)


def test_path_escaping_files_up_is_an_error(env: Env, engine: Any) -> None:
    job = env.submit(["true"], files_up={"output": "../../"})
    assert run_until_idle(env.settings(), engine) == 0
    assert job.status.value == "error" and "files_up" in job.history[-1]["runtime_details"]


def test_null_cmd_runs_the_images_own_cmd(env: Env, engine: Any) -> None:
    job = env.submit(None)
    assert run_until_idle(env.settings(), engine) == 0
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
    assert run_until_idle(env.settings(), engine) == 0
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
    assert run_until_idle(env.settings(), engine) == 0
    assert bad.status.value == "error" and "app.cmd" in bad.history[-1]["runtime_details"]
    assert good.status.value == "finished"


@pytest.mark.parametrize(
    "env_vars",
    [{"A=B": "x"}, {"": "x"}, {"A\u0000B": "x"}, {"A": "x\u0000y"}, {"A\nB": "x"}],
    ids=["eq-in-key", "empty-key", "nul-in-key", "nul-in-value", "newline-in-key"],
)
def test_odd_env_keys_end_the_job_as_an_invalid_spec(
    env: Env, engine: Any, env_vars: dict[str, str]
) -> None:
    spec = hostile_job("env")
    spec["app"]["env"] = env_vars
    spec["handler"]["files_up"] = {"output": "output", "log": "log"}
    j = env.submit_raw(spec)
    after = env.submit(["true"], files_up={})
    assert run_until_idle(env.settings(), engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "error", (j.status.value, details)
    assert details.startswith("invalid job spec: app.env"), details
    assert after.status.value == "finished"
    only_state_left(env)


@pytest.mark.parametrize("image", ["--privileged", "-v/:/host", "busybox;id", "a" * 5000])
def test_odd_image_references_are_the_jobs_error(env: Env, engine: Any, image: str) -> None:
    j = env.submit_raw(hostile_job("true", image_url=image))
    assert run_until_idle(env.settings(), engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "error", (j.status.value, details)
    only_state_left(env)


def test_stage_functions_are_usable_on_their_own(env: Env, engine: Any, tmp_path: Path) -> None:

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


def test_an_upload_failure_after_the_container_ended_keeps_the_exit_code(
    env: Env, engine: Any
) -> None:
    job = env.submit(
        ["mkdir -p /files/output", "&&", "echo x > /files/output/a.txt", "&&", "exit 4"]
    )
    with env.state.lock:
        job.paths_upload["output"] = "/proc/no-such-place"  # the store refuses the upload (403)
    assert run_until_idle(env.settings(), engine) == 0
    details = job.history[-1]["runtime_details"]
    assert job.status.value == "error" and details.startswith("exit_code: 4\n"), details
    assert "output output/a.txt" in details.splitlines()[1]


def test_a_job_past_the_local_time_limit_is_stopped_and_reported(env: Env, engine: Any) -> None:
    import time

    job = env.submit(["echo working", "&&", "sleep 300"])
    started = time.monotonic()
    assert run_until_idle(env.settings(job_time_limit_s=2, stop_grace_s=1), engine) == 0
    assert time.monotonic() - started < 20
    assert job.status.value == "error", statuses(job)
    first, *rest = job.history[-1]["runtime_details"].splitlines()
    assert first.startswith("exit_code: ") and "local time limit of 2 s" in first, first
    assert "working" in rest


def test_a_short_job_still_shows_every_status(env: Env, engine: Any) -> None:
    job = env.submit(["true"], files_up={})
    assert run_until_idle(env.settings(keepalive_interval_s=60), engine) == 0
    assert sequence(job) == EVERY_STATUS


# --- jobs shaped like DECODE's own ------------------------------------------------------------
DECODE_LIKE = "fetcher-test/decode-like:1"


# A stand-in for DECODE's /docker/entrypoint.sh: --train / --fit with --key=value arguments. Like
# the real one it writes into --model_path and --log_path without creating them, and fails when an
# input is missing.
ENTRYPOINT = r"""#!/bin/sh
set -e
for a in "$@"; do
  case "$a" in
    --train) mode=train ;;
    --fit) mode=fit ;;
    --calib_path=*) calib="${a#*=}" ;;
    --param_path=*) param="${a#*=}" ;;
    --model_path=*) model="${a#*=}" ;;
    --log_path=*) logp="${a#*=}" ;;
    --frame_path=*) frames="${a#*=}" ;;
    --output_path=*) output="${a#*=}" ;;
  esac
done
if [ "$mode" = train ]; then
  [ -s "$calib" ] || { echo "calib_path '$calib' missing" >&2; exit 2; }
  [ -s "$param" ] || { echo "param_path '$param' missing" >&2; exit 2; }
  for e in 1 2 3; do echo "epoch $e loss 0.$e" >> "$logp/train.log"; done
  cat "$param" > "$model/model_0.pt"
  mkdir "$model/ckpt" && echo last > "$model/ckpt/last.pt"
  echo trained
elif [ "$mode" = fit ]; then
  [ -s "$model" ] || { echo "model '$model' missing" >&2; exit 3; }
  [ -s "$frames" ] || { echo "frames '$frames' missing" >&2; exit 3; }
  echo "fitted $(wc -c < "$frames") bytes with $(cat "$model")" > "$output/emitters.csv"
else
  echo "usage: entrypoint.sh --train|--fit ..." >&2; exit 64
fi
"""


TRAIN_CMD = [
    "/docker/entrypoint.sh",
    "--train",
    "--calib_path=$(find /files/data -name '*.mat' | head -n 1)",
    "--param_path=$(find /files/config -name '*.yaml' | head -n 1)",
    "--model_path=/files/model",
    "--log_path=/files/log",
]


FIT_CMD = [
    "/docker/entrypoint.sh",
    "--fit",
    "--model_path=$(find /files/artifact/model -name '*.pt' | head -n 1)",
    "--frame_path=$(find /files/data -name '*.tif' | head -n 1)",
    "--output_path=/files/output",
]


@pytest.fixture(scope="module")
def decode_image(docker_client: Any) -> Iterator[str]:
    """A DECODE-like image built FROM the busybox test image (no registry), without ENTRYPOINT."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", f"FROM {IMAGE}\nCOPY entrypoint.sh /docker/entrypoint.sh\n", 0o644),
            ("entrypoint.sh", ENTRYPOINT, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data.encode()), mode
            tar.addfile(info, io.BytesIO(data.encode()))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=DECODE_LIKE, rm=True)
    yield DECODE_LIKE


def train_job(env: Env, image: str, *, with_calib: bool = True) -> Any:
    files_down = {"config/param.yaml": env.input_file("user1/config/param.yaml", b"lr: 0.1\n")}
    if with_calib:
        files_down["data/calib.mat"] = env.input_file("user1/data/calib.mat", b"MATLAB" * 100)
    job = decode_job(
        image_url=image, files_down=files_down, files_up={"log": "log", "artifact": "model"}
    )
    job["app"]["cmd"] = TRAIN_CMD
    job["hardware"] = {"cpu_cores": 1, "memory": 64}
    return env.submit_raw(job)


def test_decode_train_then_fit_on_its_stored_artifacts(
    env: Env, engine: Any, decode_image: str
) -> None:
    # Given DECODE's train command, which writes into /files/model and /files/log it does not create
    train = train_job(env, decode_image)
    assert run_until_idle(env.settings(), engine) == 0
    # Then it finished, and its files are in the store where the user-facing API looks for them
    assert train.status.value == "finished", train.history
    artifact, logs = Path(train.paths_upload["artifact"]), Path(train.paths_upload["log"])
    assert (artifact / "model/model_0.pt").read_text() == "lr: 0.1\n"
    assert (artifact / "model/ckpt/last.pt").read_text() == "last\n"
    assert "epoch 3" in (logs / "log/train.log").read_text()
    assert "trained" in (logs / "log/container.log").read_text()
    # When a fit job gets the stored model as its input, as the user-facing API hands it over
    frames = env.input_file("user1/data/frames.tif", b"\x00" * 4096)
    fit = decode_job(
        image_url=decode_image,
        files_down={
            "artifact/model/model_0.pt": str(artifact / "model/model_0.pt"),
            "data/frames.tif": frames,
        },
        files_up={"output": "output", "log": "log"},
    )
    fit["app"]["cmd"] = FIT_CMD
    fit["hardware"] = {"cpu_cores": 1, "memory": 64}
    fitted = env.submit_raw(fit)
    assert run_until_idle(env.settings(), engine) == 0
    # Then it finds the model under /files/artifact/model and finishes
    assert fitted.status.value == "finished", fitted.history
    emitters = Path(fitted.paths_upload["output"], "output", "emitters.csv").read_text()
    assert emitters == "fitted 4096 bytes with lr: 0.1\n"


def test_decode_train_without_its_calibration_is_an_error_with_its_exit_code(
    env: Env, engine: Any, decode_image: str
) -> None:
    job = train_job(env, decode_image, with_calib=False)
    assert run_until_idle(env.settings(), engine) == 0
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("exit_code: 2\n") and "calib_path '' missing" in details


def test_a_long_log_still_starts_with_the_exit_code(env: Env, engine: Any) -> None:
    job = env.submit(
        [
            "i=0; while [ $i -lt 500 ]; do echo \"epoch $i: loss=0.$i $(printf '=%.0s' $(seq 1 120))\";"
            " i=$((i+1)); done; exit 1"
        ]
    )
    assert run_until_idle(env.settings(), engine) == 0
    assert job.status.value == "error"
    details = job.history[-1]["runtime_details"]
    assert details.startswith("exit_code: 1\n"), details[:200]
    assert details.rstrip().endswith("=" * 120) and "epoch 499" in details


def test_an_input_the_server_cannot_send_names_the_input(env: Env, engine: Any) -> None:
    # Given a file id that is a directory: the server answers 200 for its URL, 500 to download it
    directory = Path(env.state.data_root, "user1/data/a-directory")
    directory.mkdir(parents=True)
    job = env.submit(["true"], files_down={"data/calib.mat": str(directory)})
    started = time.monotonic()
    assert run_until_idle(env.settings(), engine) == 0
    # Then the job is an error naming the input, at once (retrying never cures it)
    assert job.status.value == "error", statuses(job)
    details = job.history[-1]["runtime_details"]
    assert details.startswith("input data/calib.mat: ") and "500" in details, details
    assert time.monotonic() - started < 30
