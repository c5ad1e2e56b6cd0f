"""Wire models of the worker-facing API, shared by the fetcher and mock_api so that they cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fetcher.errors import InvalidJobSpec


def has_control_char(text: str) -> bool:
    """A C0 control character or DEL: never in a name, path or image reference the fetcher uses."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


class JobStatus(StrEnum):
    queued = "queued"
    pulled = "pulled"
    preprocessing = "preprocessing"
    running = "running"
    postprocessing = "postprocessing"
    finished = "finished"
    error = "error"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.finished, JobStatus.error)


class UploadType(StrEnum):
    output = "output"
    log = "log"
    artifact = "artifact"


# --- the job spec -----------------------------------------------------------------------------
# The server stores a job's JSON as it was submitted and checks little of it (`meta.date_created` may
# be any string, `meta` may carry anything). These models therefore check only what the fetcher
# uses: `app.cmd`, `app.env`, `handler.image_url`, `handler.files_down`, `handler.files_up` and the
# `hardware` fields. Everything else is kept as given (unknown keys too, at every level) and never
# fails a job.


class AppSpecs(BaseModel):
    """What the container runs: `cmd` (shell words joined and run by /bin/sh -c) and `env`."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    cmd: list[str] | None = None
    env: dict[str, str] | None = None

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_are_text(cls, value: Any) -> Any:
        """Numbers and booleans in `env` become the strings a shell would see (`true`, `42`)."""
        if not isinstance(value, dict):
            return value
        return {k: _scalar_text(v) for k, v in value.items()}

    @field_validator("env")
    @classmethod
    def _env_is_an_environment(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        """Keys a process environment can hold (`A=B` would set `A`; a NUL cuts the string)."""
        for key, text in (value or {}).items():
            if not key:
                raise ValueError("an empty variable name")
            if "=" in key or has_control_char(key):
                raise ValueError(f"variable name {key[:40]!r} contains '=' or a control character")
            if "\x00" in text:
                raise ValueError(f"the value of {key[:40]!r} contains a NUL byte")
        return value


class HandlerSpecs(BaseModel):
    """The image, and the files in (`files_down`: path -> file id) and out (`files_up`: type -> dir)."""

    model_config = ConfigDict(extra="allow")

    image_url: str
    files_down: dict[str, str] | None = None
    files_up: dict[UploadType, str] | None = None
    # not used by the fetcher: kept as given, whatever their type
    image_name: Any = None
    image_version: Any = None
    entrypoint: Any = None

    @field_validator("image_url")
    @classmethod
    def _image_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name an image")
        if has_control_char(value) or " " in value:
            raise ValueError("must be an image reference, without spaces or control characters")
        return value


class MetaSpecs(BaseModel):
    """Job metadata, used only to name the job in log lines. Nothing in it fails a job.

    `job_id` and `job_name` are kept when they are an int or a string and otherwise turned into
    text; `date_created` and every extra key are kept exactly as given.
    """

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    job_id: int | str | None = None
    job_name: str | None = None
    date_created: Any = None

    @field_validator("job_id", "job_name", mode="before")
    @classmethod
    def _loggable(cls, value: Any) -> Any:
        if value is None or isinstance(value, str | int | float):
            return _scalar_text(value) if isinstance(value, bool | float) else value
        return repr(value)[:200]


class HardwareSpecs(BaseModel):
    """What the job needs; a null field asks for nothing (and matches any worker on the server)."""

    model_config = ConfigDict(extra="allow")

    cpu_cores: int | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0)
    gpu_model: str | None = None
    gpu_archi: str | None = None
    gpu_mem: int | None = Field(default=None, ge=0)

    @property
    def needs_gpu(self) -> bool:
        return bool(self.gpu_mem) or self.gpu_model is not None or self.gpu_archi is not None


class JobSpecs(BaseModel):
    """One job as `GET /jobs` hands it out. `app`, `meta` and `hardware` may be missing or null;
    a `meta` that is not an object is dropped (nothing in it is needed)."""

    model_config = ConfigDict(extra="allow")

    app: AppSpecs = Field(default_factory=AppSpecs)
    handler: HandlerSpecs
    meta: MetaSpecs = Field(default_factory=MetaSpecs)
    hardware: HardwareSpecs = Field(default_factory=HardwareSpecs)

    @field_validator("app", "hardware", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_may_be_anything(cls, value: Any) -> Any:
        return value if isinstance(value, dict | MetaSpecs) else {}


def _scalar_text(value: Any) -> Any:
    """JSON scalars as a shell would spell them; anything else is left for validation to refuse."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class FileHTTPRequest(BaseModel):
    """A request the worker must perform as given (pre-signed S3 URL, or the API's own URL)."""

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)


class PathsUploadSpecs(BaseModel):
    output: str
    log: str
    artifact: str | None = None


class SubmittedJob(BaseModel):
    """Body of `POST /_jobs` (the user-facing API's submission to the queue)."""

    job: JobSpecs
    environment: str | None = None
    group: str | None = None
    priority: int | None = None
    paths_upload: PathsUploadSpecs


class ClaimOffer(BaseModel):
    """What this worker offers when it asks for a job: the query of `GET /jobs`."""

    memory: int
    cpu_cores: int
    gpu_mem: int = 0
    gpu_model: str | None = None
    gpu_archi: str | None = None
    groups: list[str] = Field(default_factory=list)
    limit: int = 1
    older_than: int = 0

    def to_query(self) -> list[tuple[str, str | int]]:
        query: list[tuple[str, str | int]] = [
            ("memory", self.memory),
            ("cpu_cores", self.cpu_cores),
            ("gpu_mem", self.gpu_mem),
            ("limit", self.limit),
            ("older_than", self.older_than),
        ]
        if self.gpu_model is not None:
            query.append(("gpu_model", self.gpu_model))
        if self.gpu_archi is not None:
            query.append(("gpu_archi", self.gpu_archi))
        query.extend(("groups", g) for g in self.groups)
        return query


@dataclass
class ClaimResult:
    """What one claim brought: parsed jobs by queue id, claimed jobs whose spec is invalid, and
    (shown for the log) queue ids refused because they are not small integers; or why no claim
    was made at all (`paused`: this box cannot take a job now, e.g. its disk is full)."""

    jobs: dict[str, JobSpecs] = field(default_factory=dict)
    invalid: list[InvalidJobSpec] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    paused: str | None = None


QUEUE_ID = re.compile(r"0|[1-9][0-9]{0,17}")


def valid_queue_id(raw: object) -> str | None:
    """The queue id if it is what the server's are (a small decimal integer, no sign, no leading
    zero, ASCII digits only), else None. Past this check a queue id is safe as a file name."""
    if isinstance(raw, str) and QUEUE_ID.fullmatch(raw):
        return raw
    return None
