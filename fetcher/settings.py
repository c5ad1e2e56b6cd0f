"""The one typed settings object, read from the environment and `.env`, and passed in.

Environment names are the field names in upper case, except the two that users already have in
their `.env` files: `TIMEOUT_JOB` (poll interval) and `TIMEOUT_STATUS` (keep-alive interval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fetcher.errors import ConfigError

PullPolicy = Literal["always", "if-not-present", "never"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # --- the API and how to authenticate -----------------------------------------------------
    api_url: str = Field(description="Base URL of the worker-facing API, e.g. https://host:8001")
    access_token: SecretStr | None = Field(default=None, description="A fixed bearer token")
    username: str | None = Field(default=None, description="Cognito user of the `workers` group")
    password: SecretStr | None = Field(default=None, description="Password of USERNAME")
    cognito_endpoint: str | None = Field(
        default=None,
        description="Override of https://cognito-idp.<region>.amazonaws.com/ (tests, mock_api)",
    )
    api_retry_s: float = Field(default=120.0, gt=0, description="How long one API call retries")
    http_connect_timeout_s: float = Field(default=10.0, gt=0)
    http_read_timeout_s: float = Field(default=60.0, gt=0)

    # --- where jobs live -------------------------------------------------------------------------
    path_base: Path = Field(
        description="Directory holding the job directories (as the fetcher sees it)"
    )
    path_host_base: Path | None = Field(
        default=None,
        description="The same directory as the Docker engine's host sees it (when the fetcher runs"
        " in a container); unset = PATH_BASE",
    )
    keep_failed_job_dirs: bool = False

    # --- timing ----------------------------------------------------------------------------------
    poll_interval_s: float = Field(
        default=10.0, gt=0, validation_alias=AliasChoices("TIMEOUT_JOB", "poll_interval_s")
    )
    keepalive_interval_s: float = Field(
        default=60.0, gt=0, validation_alias=AliasChoices("TIMEOUT_STATUS", "keepalive_interval_s")
    )
    stop_grace_s: float = Field(default=10.0, ge=0, description="SIGTERM → SIGKILL grace of a job")
    api_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between claims while the API is down"
    )
    exit_idle_polls: int = Field(
        default=3,
        ge=1,
        description="With --exit-when-idle: exit after this many empty polls in a row",
    )
    drain_timeout_s: float | None = Field(
        default=None, ge=0, description="After the first stop signal, wait this long, then force"
    )

    # --- what the box offers -------------------------------------------------------------------
    max_parallel_jobs: int | None = Field(default=None, ge=1)
    cpu_cores: int | None = Field(default=None, ge=1, description="Override the engine's CPU count")
    reserve_cpu_cores: int = Field(default=0, ge=0)
    memory_mb: int | None = Field(default=None, ge=1, description="Override the engine's memory")
    reserve_memory_mb: int = Field(default=0, ge=0)
    gpus: str = Field(
        default="", description="Comma-separated GPU UUIDs or indices to use; empty = all"
    )
    groups: str = Field(default="", description="Comma-separated job groups to prefer")
    job_default_cpu_cores: int = Field(default=1, ge=1)
    job_default_memory_mb: int = Field(default=2000, ge=1)

    # --- containers ------------------------------------------------------------------------------
    image_pull_policy: PullPolicy = "if-not-present"
    shm_size: str = Field(default="8g", pattern=r"^\d+[bkmg]?$")
    ipc_host: bool = False
    enforce_job_limits: bool = Field(
        default=True, description="Limit each container to its job's cpu_cores and memory"
    )
    download_workers: int = Field(default=4, ge=1, le=32)
    log_tail_bytes: int = Field(default=4000, ge=100)
    probe_image: str = Field(
        default="busybox:latest", description="Small image `check` uses to probe the mount"
    )

    # --- identity, logging -----------------------------------------------------------------------
    fetcher_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Default: kept in PATH_BASE/.fetcher/id",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        if self.username and not self.password:
            raise ValueError("PASSWORD: required when USERNAME is set")
        if not self.username and not self.access_token:
            raise ValueError("ACCESS_TOKEN or USERNAME/PASSWORD: one of them is required")
        return self

    @property
    def host_base(self) -> Path:
        return self.path_host_base or self.path_base

    @property
    def group_list(self) -> list[str]:
        return [g.strip() for g in self.groups.split(",") if g.strip()]

    @property
    def gpu_selection(self) -> list[str]:
        return [g.strip() for g in self.gpus.split(",") if g.strip()]

    @property
    def state_dir(self) -> Path:
        """Where the fetcher keeps its own state (outbox, journal, heartbeat, id)."""
        return self.path_base / ".fetcher"


def env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        return str(first)
    return field.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a wrong or missing one raises ConfigError naming it and what is expected."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            name = env_name(loc) if loc else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "missing (required)"
                desc = (
                    Settings.model_fields[loc].description if loc in Settings.model_fields else None
                )
                if desc:
                    msg += f": {desc}"
            problems.append(f"{name}: {msg}" if name else msg)
        raise ConfigError("configuration error: " + "; ".join(problems)) from None
