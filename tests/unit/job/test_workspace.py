"""The spec's paths, checked before anything is written: every hostile files_down key and files_up
directory ends as one clear line, `invalid job spec: <field>: <why>`, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fetcher.errors import InvalidJobSpec
from fetcher.job.workspace import Workspace, plan_layout
from fetcher.models import JobSpecs, UploadType


def spec(files_down: Any = None, files_up: Any = None) -> JobSpecs:
    return JobSpecs.model_validate(
        {"handler": {"image_url": "img", "files_down": files_down, "files_up": files_up}}
    )


BAD_KEYS = [
    ("", "is empty"),
    (".", "names the job directory itself"),
    ("./", "names the job directory itself"),
    ("//", "must be relative"),
    ("/etc/passwd", "must be relative"),
    ("../x", "must not contain '..'"),
    ("a/../../x", "must not contain '..'"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    ("x" * 5000, "longer than 1024 bytes"),
    ("a/" + "y" * 300, "longer than 255 bytes"),
    ("/".join(["d"] * 40), "more than 32 directories deep"),
]


@pytest.mark.parametrize(("key", "why"), BAD_KEYS)
def test_a_hostile_files_down_key_is_one_clear_line(key: str, why: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        plan_layout("7", spec({key: "data/u/f"}))
    err = info.value
    assert err.field.startswith("handler.files_down[") and why in err.problem
    line = f"invalid job spec: {err.field}: {err.problem}"
    assert "\n" not in line and "\x00" not in line and len(line) < 300


@pytest.mark.parametrize(
    ("files_down", "why"),
    [
        ({"a": "f1", "a/b": "f2"}, "a file cannot hold another"),
        ({"a/b": "f1", "a": "f2"}, "a file cannot hold another"),
        ({"a/b": "f1", "./a//b": "f2"}, "same file"),
        ({"a": ""}, "non-empty"),
        ({"a": "../../etc/passwd"}, "'..'"),
        ({"a": "data/\x00"}, "control character"),
    ],
)
def test_conflicting_or_bad_inputs_are_refused(files_down: dict[str, str], why: str) -> None:
    with pytest.raises(InvalidJobSpec, match=why):
        plan_layout("7", spec(files_down))


@pytest.mark.parametrize("rel", ["", ".", "/abs", "../../", "a/../..", "x\x00"])
def test_a_files_up_directory_outside_or_at_the_job_directory_is_refused(rel: str) -> None:
    with pytest.raises(InvalidJobSpec, match=r"handler\.files_up\['output'\]"):
        plan_layout("7", spec(files_up={"output": rel}))


@pytest.mark.parametrize("rel", ["a:out", "./c:/x", "\\\\srv\\share", "out\\..\\..\\x"])
def test_a_files_up_directory_the_upload_cannot_send_is_an_invalid_spec_up_front(rel: str) -> None:
    """A `files_up` directory that passes as a Linux path but that the upload refuses as its
    base_path (a drive prefix, a leading backslash, a `..` between backslashes) is the job's own
    invalid spec before it runs, naming the path: never a bare ValueError at the upload, a fetcher
    error that hands the job back to fail again on every worker."""
    with pytest.raises(InvalidJobSpec) as info:
        plan_layout("7", spec(files_up={"output": rel}))
    err = info.value
    assert err.field == "handler.files_up['output']"
    assert "cannot be sent as an upload's base_path" in err.problem
    assert repr(rel.removeprefix("./")) in err.problem


def test_a_files_up_directory_that_is_an_input_file_is_refused() -> None:
    with pytest.raises(InvalidJobSpec, match="also an input file"):
        plan_layout("7", spec({"log": "f"}, {"log": "log"}))


def test_a_decode_train_layout_is_accepted_and_normalised() -> None:
    layout = plan_layout(
        "7",
        spec(
            {"config/param.yaml": "data/u/p.yaml", "./data//sub/calib.mat": "s3://b/u/c.mat"},
            {"log": "log", "artifact": "model", "output": "output/"},
        ),
    )
    assert [i.rel for i in layout.inputs] == ["config/param.yaml", "data/sub/calib.mat"]
    assert {o.kind: o.rel for o in layout.outputs} == {
        UploadType.log: "log",
        UploadType.artifact: "model",
        UploadType.output: "output",
    }


def test_create_makes_every_directory_the_job_writes_into(tmp_path: Path) -> None:
    # Given the DECODE train layout and a restrictive umask
    layout = plan_layout(
        "7",
        spec(
            {"config/param.yaml": "f", "data/calib.mat": "g"}, {"log": "log", "artifact": "model"}
        ),
    )
    old = os.umask(0o077)
    try:
        Workspace("7", tmp_path, tmp_path).create(layout)
    finally:
        os.umask(old)
    job = tmp_path / "7"
    for d in ("model", "log", "config", "data"):
        assert (job / d).is_dir() and (job / d).stat().st_mode & 0o777 == 0o777, d
    assert job.stat().st_mode & 0o777 == 0o777


def test_create_replaces_a_link_in_place_of_the_job_directory(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    base = tmp_path / "base"
    base.mkdir()
    (base / "7").symlink_to(victim)
    Workspace("7", base, base).create(plan_layout("7", spec()))
    assert (base / "7").is_dir() and not (base / "7").is_symlink()
    assert (victim / "keep").read_text() == "x"


def test_outputs_are_listed_with_base_path_starting_at_the_files_up_directory(
    tmp_path: Path,
) -> None:
    layout = plan_layout("7", spec(files_up={"artifact": "model", "log": "log"}))
    ws = Workspace("7", tmp_path, tmp_path)
    ws.create(layout)
    (tmp_path / "7/model/ckpt").mkdir()
    (tmp_path / "7/model/model_0.pt").write_bytes(b"m")
    (tmp_path / "7/model/ckpt/last.pt").write_bytes(b"l")
    (tmp_path / "7/model/evil").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "7/log/pipe")
    found = {(f.kind.value, f.base_path, f.name) for f in ws.output_files(layout)}
    assert found == {("artifact", "model", "model_0.pt"), ("artifact", "model/ckpt", "last.pt")}


def test_too_many_outputs_are_the_jobs_fault_and_named_by_the_setting(tmp_path: Path) -> None:
    from fetcher.job.workspace import OutputLimit

    layout = plan_layout("7", spec(files_up={"artifact": "model", "output": "out"}))
    ws = Workspace("7", tmp_path, tmp_path)
    ws.create(layout)
    for i in range(6):
        (tmp_path / f"7/model/m{i}").write_bytes(b"x" * 1000)
        (tmp_path / f"7/out/o{i}").write_bytes(b"")
    assert len(ws.output_files(layout, max_files=12)) == 12
    # the budget is shared by all files_up directories
    with pytest.raises(OutputLimit, match=r"more than 11 files .*\(JOB_OUTPUT_MAX_FILES\)"):
        ws.output_files(layout, max_files=11)
    assert len(ws.output_files(layout, max_bytes=6000)) == 12
    with pytest.raises(OutputLimit, match=r"\(JOB_OUTPUT_MAX_MB\)"):
        ws.output_files(layout, max_bytes=5999)


def test_entries_not_uploaded_are_logged_a_few_then_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = plan_layout("7", spec(files_up={"output": "out"}))
    ws = Workspace("7", tmp_path, tmp_path)
    ws.create(layout)
    for i in range(500):
        (tmp_path / f"7/out/l{i:03}").symlink_to("/nonexistent")
    with caplog.at_level("WARNING"):
        assert ws.output_files(layout) == []
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 21
    assert lines[0] == "job 7: not uploading 'out/l000': a symbolic link"
    assert lines[-1] == "job 7: not uploading 480 more entries (links, FIFOs, ...)"


def test_an_output_whose_name_is_not_utf8_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """An output named `a\\xffb` (not UTF-8) is skipped, with the directories below such a name:
    never a UnicodeEncodeError that hands the job back (to fail again on every worker of the pool,
    for ever)."""
    layout = plan_layout("7", spec(files_up={"output": "out"}))
    ws = Workspace("7", tmp_path, tmp_path)
    ws.create(layout)
    os.makedirs(os.fsencode(tmp_path / "7/out/sub") + b"/d\xffir")
    (tmp_path / "7/out/ok.txt").write_text("fine")
    with open(os.fsencode(tmp_path / "7/out") + b"/a\xffb", "wb") as fh:
        fh.write(b"x")
    with open(os.fsencode(tmp_path / "7/out/sub") + b"/d\xffir/c.txt", "wb") as fh:
        fh.write(b"x")
    found = {(f.base_path, f.name) for f in ws.output_files(layout)}
    assert found == {("out", "ok.txt")}


def test_an_output_directory_the_upload_cannot_send_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """A directory the job named `a\\..\\b` (a Linux name the upload would refuse in its
    base_path) is skipped with a log line, like a link: never a ValueError at the upload."""
    layout = plan_layout("7", spec(files_up={"output": "out"}))
    ws = Workspace("7", tmp_path, tmp_path)
    ws.create(layout)
    (tmp_path / "7/out/a\\..\\b").mkdir()
    (tmp_path / "7/out/a\\..\\b/x.txt").write_text("x")
    (tmp_path / "7/out/ok.txt").write_text("fine")
    found = {(f.base_path, f.name) for f in ws.output_files(layout)}
    assert found == {("out", "ok.txt")}
