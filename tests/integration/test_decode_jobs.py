"""Jobs shaped like DECODE's own, on a real engine against the mock: the train command that writes
into directories it does not create, the fit job that reads the stored artifacts, long logs."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from tests.helpers import IMAGE, Env, decode_job, statuses

pytestmark = pytest.mark.docker

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


def run(env: Env, engine: Any) -> None:
    assert build_daemon(env.settings(), exit_when_idle=True, docker_client=engine).run() == 0


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
    run(env, engine)
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
    run(env, engine)
    # Then it finds the model under /files/artifact/model and finishes
    assert fitted.status.value == "finished", fitted.history
    emitters = Path(fitted.paths_upload["output"], "output", "emitters.csv").read_text()
    assert emitters == "fitted 4096 bytes with lr: 0.1\n"


def test_decode_train_without_its_calibration_is_an_error_with_its_exit_code(
    env: Env, engine: Any, decode_image: str
) -> None:
    job = train_job(env, decode_image, with_calib=False)
    run(env, engine)
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
    run(env, engine)
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
    run(env, engine)
    # Then the job is an error naming the input, at once (retrying never cures it)
    assert job.status.value == "error", statuses(job)
    details = job.history[-1]["runtime_details"]
    assert details.startswith("input data/calib.mat: ") and "500" in details, details
    assert time.monotonic() - started < 30
