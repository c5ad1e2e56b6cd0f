"""Logging set-up (readable text, or one JSON object per line), and a filter that keeps secrets
out of every log line."""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

LogFormat = Literal["text", "json"]

_lock = threading.Lock()
_secrets: set[str] = set()
_URL_SECRET = re.compile(r"(?i)([?&](?:x-amz-[a-z-]*|signature|token|access_token|key)=)[^&\s'\"]+")


def register_secret(value: str | None) -> None:
    """Make `value` unprintable: every log record and error text gets it replaced with `***`."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, "***")
    return _URL_SECRET.sub(r"\1***", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_JOB_SUBJECT = re.compile(r"job ([A-Za-z0-9_.-]{1,100}):")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (ISO 8601 UTC, milliseconds), `level`, `logger`,
    `message`; `job` when the message starts with `job <id>:`; `exc` (the traceback as one
    string) and `stack` when the record has them. Text is redacted here too (defence in depth:
    RedactingFilter already cleaned the record)."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, str] = {
            "time": created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        job = _JOB_SUBJECT.match(message)
        if job:
            entry["job"] = job.group(1)
        exc = record.exc_text
        if not exc and record.exc_info:
            exc = self.formatException(record.exc_info)
        if exc:
            entry["exc"] = redact(exc)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(fmt: LogFormat = "text") -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Log to stderr at `level`, as readable text or (`fmt="json"`) one JSON object per line;
    every record goes through RedactingFilter."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "docker", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RecentErrors(logging.Handler):
    """The last few ERROR lines of this process (redacted), for `fetcher status`."""

    def __init__(self, keep: int = 10) -> None:
        super().__init__(logging.ERROR)
        self.keep = keep
        self._lines: list[tuple[float, str]] = []
        self._guard = threading.Lock()
        self.addFilter(RedactingFilter())

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage().splitlines()[0] if record.getMessage() else ""
        with self._guard:
            self._lines = [*self._lines, (record.created, line[:300])][-self.keep :]

    def lines(self) -> list[tuple[float, str]]:
        with self._guard:
            return list(self._lines)


def shown(value: object, limit: int = 60, *, as_repr: bool = True) -> str:
    """A hostile value (an id, a path, a message from a server), printable on one line and short:
    its repr (or, `as_repr=False`, its text with line breaks as spaces), cut at `limit`."""
    text = repr(value) if as_repr else str(value).replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def printable(value: object) -> str:
    """A value's text without control characters (no terminal escapes from a job's name)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment (pre-signed URLs carry secrets there)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return url.split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]


def shown_url(url: str) -> str:
    """A URL fit for an error text: `safe_url`, quoted, at most 200 characters."""
    return repr(safe_url(url)[:200])
