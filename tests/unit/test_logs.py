"""Logs: LOG_FORMAT=json (one JSON object per line, with the job's id, tracebacks as one
string) and text, both redacted; URLs in error texts without user info, query or fragment."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fetcher.logs import register_secret, setup_logging

SECRET = "json-log-secret-Zq81x"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(capsys)]


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    # Given logging set up the way callers always did
    setup_logging("INFO")

    # When something is logged
    logging.getLogger("fetcher.worker").info("worker: idle")

    # Then it is a readable line, not JSON
    (line,) = lines(capsys)
    assert line.endswith("INFO    worker: idle")
    assert not line.startswith("{")


def test_json_lines_carry_time_level_logger_message_and_job(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given JSON logging at INFO
    setup_logging("INFO", fmt="json")
    before = datetime.now(UTC)

    # When the pipeline and the loop log, with arguments and a message over two lines
    logging.getLogger("fetcher.job.pipeline").info("job %s: uploaded %d files", "q-42", 3)
    logging.getLogger("fetcher.worker").warning("worker: API down\nretrying")
    logging.getLogger("fetcher.worker").debug("worker: not shown at INFO")

    # Then each record is one line holding one object with the fields
    first, second = records(capsys)
    assert first["level"] == "INFO"
    assert first["logger"] == "fetcher.job.pipeline"
    assert first["message"] == "job q-42: uploaded 3 files"
    assert first["job"] == "q-42"
    assert first["time"].endswith("Z")
    when = datetime.fromisoformat(first["time"])
    assert when.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert second == {
        "time": second["time"],
        "level": "WARNING",
        "logger": "fetcher.worker",
        "message": "worker: API down\nretrying",
    }


@pytest.mark.parametrize(
    ("message", "job"),
    [
        ("job 42: finished", "42"),
        ("job a_b.c-1: pulling busybox", "a_b.c-1"),
        ("worker: job 42: not at the start", None),
        ("job 42 without a colon", None),
        ("jobs: 3 running", None),
    ],
)
def test_job_field_only_for_messages_whose_subject_is_a_job(
    capsys: pytest.CaptureFixture[str], message: str, job: str | None
) -> None:
    setup_logging("INFO", fmt="json")
    logging.getLogger("fetcher").info(message)
    (record,) = records(capsys)
    assert record.get("job") == job


def test_a_traceback_is_one_string_in_exc(capsys: pytest.CaptureFixture[str]) -> None:
    # Given JSON logging
    setup_logging("INFO", fmt="json")

    # When an exception is logged with its traceback
    try:
        raise ValueError("bad answer")  # noqa: TRY301
    except ValueError:
        logging.getLogger("fetcher.worker").exception("worker: loop failed; going on")

    # Then it is still one line, and `exc` holds the whole traceback
    (line,) = lines(capsys)
    record = json.loads(line)
    assert record["message"] == "worker: loop failed; going on"
    assert record["level"] == "ERROR"
    assert record["exc"].startswith("Traceback (most recent call last):")
    assert record["exc"].rstrip().endswith("ValueError: bad answer")


def test_secrets_never_reach_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a registered secret and JSON logging
    register_secret(SECRET)
    setup_logging("DEBUG", fmt="json")
    log = logging.getLogger("fetcher.api")

    # When it appears in a message, its arguments, a pre-signed URL, a traceback and a stack
    log.info("job 7: token %s", SECRET)
    log.info(f"auth: logged in with {SECRET}")
    log.info("job 7: GET https://s3.test/k?X-Amz-Signature=deadbeefcafe&x=1")
    try:
        raise RuntimeError(f"login failed for {SECRET}")  # noqa: TRY301
    except RuntimeError:
        log.exception("auth: login failed")
    log.info("auth: where %s", SECRET, stack_info=True)

    # Then no line holds it, and each says where it was
    out = lines(capsys)
    assert len(out) == 5
    assert not any(SECRET in line or "deadbeefcafe" in line for line in out)
    parsed = [json.loads(line) for line in out]
    assert parsed[0]["message"] == "job 7: token ***" and parsed[0]["job"] == "7"
    assert parsed[1]["message"] == "auth: logged in with ***"
    assert "X-Amz-Signature=***" in parsed[2]["message"]
    assert "RuntimeError: login failed for ***" in parsed[3]["exc"]
    assert "stack" in parsed[4]


def test_urls_in_error_texts_lose_user_info_query_and_fragment() -> None:
    from fetcher.logs import safe_url, shown_url

    url = "https://user:pw@s3.test:9000/b/k?X-Amz-Signature=s3cret#frag"
    assert safe_url(url) == "https://s3.test:9000/b/k"
    assert shown_url(url) == "'https://s3.test:9000/b/k'"
