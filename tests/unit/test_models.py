"""The job spec models check only what the fetcher uses.

Real DECODE-shaped specs (the protocol notes' example) with odd meta and extras at every level must
parse, their extras kept; a spec the fetcher cannot run is refused, naming the field.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from fetcher import models
from fetcher.models import JobSpecs, SubmittedJob
from tests.helpers import decode_job

Edit = Callable[[dict[str, Any]], None]


def edited(edit: Edit) -> dict[str, Any]:
    spec = decode_job()
    edit(spec)
    return spec


def put(path: str, value: Any) -> Edit:
    """An edit that sets `a.b.c` to `value` (creating nothing: the parents must exist)."""

    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def drop(path: str) -> Edit:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node[p]
        del node[last]

    return edit


def error_field(spec: Any) -> str:
    """The field a refusal names, spelled as the client reports it (`handler.image_url`)."""
    with pytest.raises(ValidationError) as info:
        JobSpecs.model_validate(spec)
    return ".".join(str(p) for p in info.value.errors()[0]["loc"]) or "(root)"


# --- accepted: whatever the fetcher does not use -----------------------------------------------
ACCEPTED: list[tuple[str, Edit, Callable[[JobSpecs], object]]] = [
    ("the protocol's example", put("meta.job_name", "x"), lambda j: j.meta.job_id == 4242),
    (
        "date_created not a date",
        put("meta.date_created", "last tuesday"),
        lambda j: j.meta.date_created == "last tuesday",
    ),
    (
        "date_created a number",
        put("meta.date_created", 1_700_000_000),
        lambda j: j.meta.date_created == 1_700_000_000,
    ),
    ("date_created null", put("meta.date_created", None), lambda j: j.meta.date_created is None),
    ("date_created missing", drop("meta.date_created"), lambda j: j.meta.date_created is None),
    ("job_id a string", put("meta.job_id", "abc-17"), lambda j: j.meta.job_id == "abc-17"),
    ("job_id missing", drop("meta.job_id"), lambda j: j.meta.job_id is None),
    ("job_id a float", put("meta.job_id", 4.5), lambda j: j.meta.job_id == "4.5"),
    ("job_id an object", put("meta.job_id", {"a": 1}), lambda j: "a" in str(j.meta.job_id)),
    ("job_name a number", put("meta.job_name", 7), lambda j: j.meta.job_name == "7"),
    ("job_name a list", put("meta.job_name", [1]), lambda j: j.meta.job_name == "[1]"),
    (
        "meta extras",
        put("meta.owner", {"id": [1, 2], "mail": None}),
        lambda j: j.meta.model_extra == {"owner": {"id": [1, 2], "mail": None}},
    ),
    ("meta missing", drop("meta"), lambda j: j.meta.job_id is None),
    ("meta null", put("meta", None), lambda j: j.meta.job_id is None),
    ("meta a string", put("meta", "n/a"), lambda j: j.meta.job_id is None),
    ("meta a list", put("meta", [1, 2]), lambda j: j.meta.job_id is None),
    (
        "handler's unused fields of any type",
        lambda s: s["handler"].update(image_name=None, image_version=10, entrypoint=["a"]),
        lambda j: j.handler.image_version == 10 and j.handler.entrypoint == ["a"],
    ),
    ("handler's unused fields missing", drop("handler.entrypoint"), lambda j: True),
    (
        "handler extras",
        put("handler.registry_auth", {"user": "u"}),
        lambda j: j.handler.model_extra == {"registry_auth": {"user": "u"}},
    ),
    (
        "app extras",
        put("app.workdir", "/files"),
        lambda j: j.app.model_extra == {"workdir": "/files"},
    ),
    (
        "hardware extras",
        put("hardware.gpu_count", 2),
        lambda j: j.hardware.model_extra == {"gpu_count": 2},
    ),
    (
        "top-level extras",
        put("future", {"x": [1]}),
        lambda j: j.model_extra == {"future": {"x": [1]}},
    ),
    ("app null", put("app", None), lambda j: j.app.cmd is None and j.app.env is None),
    ("app missing", drop("app"), lambda j: j.app.cmd is None),
    ("cmd null", put("app.cmd", None), lambda j: j.app.cmd is None),
    ("env null", put("app.env", None), lambda j: j.app.env is None),
    (
        "env numbers and booleans",
        put("app.env", {"SEED": 42, "LR": 0.5, "DEBUG": True}),
        lambda j: j.app.env == {"SEED": "42", "LR": "0.5", "DEBUG": "true"},
    ),
    (
        "cmd with a number",
        put("app.cmd", ["sleep", 5]),
        lambda j: j.app.cmd == ["sleep", "5"],
    ),
    ("files_down null", put("handler.files_down", None), lambda j: j.handler.files_down is None),
    ("files_up null", put("handler.files_up", None), lambda j: j.handler.files_up is None),
    ("hardware missing", drop("hardware"), lambda j: not j.hardware.needs_gpu),
    ("hardware null", put("hardware", None), lambda j: j.hardware.memory is None),
    (
        "hardware all null",
        put("hardware", dict.fromkeys(("cpu_cores", "memory", "gpu_model", "gpu_mem"))),
        lambda j: j.hardware.cpu_cores is None,
    ),
    ("memory as text", put("hardware.memory", "2000"), lambda j: j.hardware.memory == 2000),
    (
        "a huge string",
        put("meta.notes", "é" * 1_000_000),
        lambda j: len((j.meta.model_extra or {})["notes"]) == 1_000_000,
    ),
]


@pytest.mark.parametrize(("case", "edit", "check"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_what_the_fetcher_does_not_use_never_fails_a_job(
    case: str, edit: Edit, check: Callable[[JobSpecs], object]
) -> None:
    spec = edited(edit)
    job = JobSpecs.model_validate(spec)
    assert check(job), case
    assert job.handler.image_url == "registry.example/decode:v0_10_1"


def test_extras_at_every_level_survive_a_round_trip() -> None:
    spec = decode_job(registry={"mirror": "m"})
    spec["meta"]["owner"] = "alice"
    spec["app"]["workdir"] = "/files"
    spec["hardware"]["gpu_count"] = 1
    spec["future"] = [1, 2]
    dumped = JobSpecs.model_validate(copy.deepcopy(spec)).model_dump(mode="json")
    assert dumped["handler"]["registry"] == {"mirror": "m"}
    assert dumped["meta"]["owner"] == "alice" and dumped["app"]["workdir"] == "/files"
    assert dumped["hardware"]["gpu_count"] == 1 and dumped["future"] == [1, 2]
    assert dumped["meta"]["date_created"] == spec["meta"]["date_created"]


def test_the_fields_the_fetcher_uses_are_parsed() -> None:
    job = JobSpecs.model_validate(decode_job())
    assert job.app.cmd is not None and job.app.cmd[0] == "/docker/entrypoint.sh"
    assert job.app.env == {"DECODE_SEED": "42"}
    assert job.handler.files_down == {
        "config/param.yaml": "data/user1/config/param.yaml",
        "data/sub/calib.bin": "s3://bucket/user1/data/calib.bin",
    }
    assert job.handler.files_up == {
        models.UploadType.log: "log",
        models.UploadType.artifact: "model",
        models.UploadType.output: "output",
    }
    assert (job.hardware.cpu_cores, job.hardware.memory, job.hardware.gpu_mem) == (2, 2000, None)
    assert not job.hardware.needs_gpu


# --- refused: what the fetcher needs and cannot use ------------------------------------------
REFUSED: list[tuple[str, Edit, str]] = [
    ("no handler", drop("handler"), "handler"),
    ("handler a string", put("handler", "registry.example/decode:1"), "handler"),
    ("no image_url", drop("handler.image_url"), "handler.image_url"),
    ("empty image_url", put("handler.image_url", ""), "handler.image_url"),
    ("blank image_url", put("handler.image_url", "  "), "handler.image_url"),
    ("image_url a number", put("handler.image_url", 5), "handler.image_url"),
    ("image_url null", put("handler.image_url", None), "handler.image_url"),
    ("cmd a string", put("app.cmd", "echo hi"), "app.cmd"),
    ("cmd with an object", put("app.cmd", ["echo", {"a": 1}]), "app.cmd.1"),
    ("env a list", put("app.env", ["A=1"]), "app.env"),
    ("env value null", put("app.env", {"A": None}), "app.env.A"),
    ("env value an object", put("app.env", {"A": {"b": 1}}), "app.env.A"),
    ("files_down a list", put("handler.files_down", ["a"]), "handler.files_down"),
    ("files_down id a number", put("handler.files_down", {"a": 1}), "handler.files_down.a"),
    (
        "files_up an unknown type",
        put("handler.files_up", {"checkpoints": "ckpt"}),
        "handler.files_up.checkpoints.[key]",
    ),
    ("files_up dir null", put("handler.files_up", {"log": None}), "handler.files_up.log"),
    ("memory negative", put("hardware.memory", -1), "hardware.memory"),
    ("memory not a number", put("hardware.memory", "lots"), "hardware.memory"),
    ("memory fractional", put("hardware.memory", 1.5), "hardware.memory"),
    ("gpu_model a number", put("hardware.gpu_model", 100), "hardware.gpu_model"),
    ("hardware a string", put("hardware", "big"), "hardware"),
    ("app a list", put("app", ["echo"]), "app"),
]


@pytest.mark.parametrize(("case", "edit", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_spec_the_fetcher_cannot_run_is_refused_naming_the_field(
    case: str, edit: Edit, field: str
) -> None:
    assert error_field(edited(edit)) == field, case


@pytest.mark.parametrize("spec", [None, "x", [decode_job()], 42])
def test_a_spec_that_is_not_an_object_is_refused(spec: Any) -> None:
    assert error_field(spec) == "(root)"


def test_the_shared_names_stay_importable() -> None:
    for name in (
        "JobSpecs",
        "AppSpecs",
        "HandlerSpecs",
        "MetaSpecs",
        "HardwareSpecs",
        "SubmittedJob",
        "PathsUploadSpecs",
        "FileHTTPRequest",
        "ClaimOffer",
        "ClaimResult",
        "JobStatus",
        "UploadType",
    ):
        assert hasattr(models, name), name


def test_submitted_job_dumps_the_spec_with_its_extras() -> None:
    sub = SubmittedJob.model_validate(
        {"job": decode_job(), "paths_upload": {"output": "o", "log": "l"}, "group": "lab"}
    )
    dumped = sub.model_dump(mode="json")
    assert dumped["job"]["handler"]["image_name"] == "decode" and dumped["group"] == "lab"


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"A=B": "x"}, "contains '=' or a control character"),
        ({"A\nB": "x"}, "contains '=' or a control character"),
        ({"": "x"}, "an empty variable name"),
        ({"A": "x\x00y"}, "NUL byte"),
    ],
)
def test_an_env_a_process_cannot_hold_is_an_invalid_spec(env: dict[str, str], why: str) -> None:
    """An env no process can hold is refused by name: `{"A=B": "x"}` (which would run with A set to
    "B=x"), a newline or NUL, an empty name."""
    with pytest.raises(ValidationError, match=re.escape(why)):
        JobSpecs.model_validate({"app": {"env": env}, "handler": {"image_url": "img"}})


@pytest.mark.parametrize("image", ["img\nINFO job 9: forged line", "img\x1b[2J", "two words", ""])
def test_an_image_reference_with_control_characters_is_an_invalid_spec(image: str) -> None:
    with pytest.raises(ValueError, match="image"):
        JobSpecs.model_validate({"handler": {"image_url": image}})
