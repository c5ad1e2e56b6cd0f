"""Wire models of the worker-facing API, shared by the fetcher and mock_api so that they cannot drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fetcher.errors import InvalidJobSpec


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


class AppSpecs(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    cmd: list[str] | None = None
    env: dict[str, str] | None = None


class HandlerSpecs(BaseModel):
    image_url: str = Field(min_length=1)
    image_name: str | None = None
    image_version: str | None = None
    entrypoint: str | None = None
    files_down: dict[str, str] | None = None
    files_up: dict[UploadType, str] | None = None


class MetaSpecs(BaseModel):
    """Job metadata; extra keys sent by the server are kept."""

    model_config = ConfigDict(extra="allow")

    job_id: int | str | None = None
    date_created: datetime | None = None
    job_name: str | None = None


class HardwareSpecs(BaseModel):
    cpu_cores: int | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, ge=0)
    gpu_model: str | None = None
    gpu_archi: str | None = None
    gpu_mem: int | None = Field(default=None, ge=0)

    @property
    def needs_gpu(self) -> bool:
        return bool(self.gpu_mem) or self.gpu_model is not None or self.gpu_archi is not None


class JobSpecs(BaseModel):
    app: AppSpecs = Field(default_factory=AppSpecs)
    handler: HandlerSpecs
    meta: MetaSpecs = Field(default_factory=MetaSpecs)
    hardware: HardwareSpecs = Field(default_factory=HardwareSpecs)


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
    """What one claim brought: parsed jobs by queue id, and claimed jobs whose spec is invalid."""

    jobs: dict[str, JobSpecs] = field(default_factory=dict)
    invalid: list[InvalidJobSpec] = field(default_factory=list)
