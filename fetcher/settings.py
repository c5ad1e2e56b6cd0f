"""The one typed settings object, read from the environment and `.env`, and passed in.

Environment names are the field names in upper case, except the two that users already have in
their `.env` files: `TIMEOUT_JOB` (poll interval) and `TIMEOUT_STATUS` (keep-alive interval).
Job groups are `JOB_GROUPS`: bash cannot export `GROUPS` (a special variable; `export GROUPS=x` is
silently ignored), which is still read as a fallback where it can be set (.env, `docker run -e`).
With ACCESS_TOKEN set, USERNAME and PASSWORD are ignored (login shells often export USERNAME).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fetcher.errors import ConfigError
from fetcher.statedir import StateDir

PullPolicy = Literal["auto", "always", "if-not-present", "never"]


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
    api_retry_s: float = Field(
        default=900.0,
        gt=0,
        description="How long one API call (a transfer, a login) retries before the job is handed back",
    )
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
    on_worker_failure: Literal["hand-back", "error"] = Field(
        default="hand-back",
        description="What a job gets when the worker, not the job, fails (shutdown, outage, engine)",
    )
    job_time_limit_s: float | None = Field(
        default=None, gt=0, description="Stop a job's container after this long and report error"
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
    job_groups: str = Field(
        default="",
        validation_alias=AliasChoices("JOB_GROUPS", "GROUPS", "job_groups"),
        description="Comma-separated job groups to take first (GROUPS, the old name, is read too)",
    )
    job_default_cpu_cores: int | None = Field(
        default=None, ge=1, description="Share of a job stating no cpu_cores; unset = one slot's"
    )
    job_default_memory_mb: int | None = Field(
        default=None, ge=1, description="Share of a job stating no memory; unset = one slot's"
    )

    min_free_disk_mb: int = Field(
        default=1024, ge=0, description="Claim no job while PATH_BASE has less free; 0 = no check"
    )

    # --- GPUs: which are offered, quarantine, figures ------------------------------------------
    gpu_foreign_memory_max_mb: int = Field(
        default=256,
        ge=0,
        description="A GPU whose processes not started by the fetcher use more memory than this is"
        " not offered (a shared lab box)",
    )
    quarantine_after_failures: int = Field(
        default=3,
        ge=1,
        description="Quarantine a GPU (or the box) after this many jobs in a row failed for its own"
        " trouble",
    )
    gpu_xid_ignored: str = Field(
        default="13,31,43,45,68,109",
        pattern=r"^[0-9, ]*$",
        description="Xid events that do not quarantine a GPU (application errors), comma-separated",
    )
    gpu_sample_interval_s: float = Field(
        default=2.0, gt=0, description="How often a running job's GPUs are sampled for its figures"
    )

    # --- throughput: stage the next job while the GPU is busy ----------------------------------
    stage_ahead: bool = Field(
        default=False,
        description="Claim a job for a busy GPU, download its inputs and image, and start it the"
        " moment the GPU is free (one per GPU)",
    )
    stage_ahead_max_wait_s: float = Field(
        default=600.0,
        gt=0,
        description="A staged job not started within this long of its claim (its download and image"
        " included) is handed back",
    )
    stage_ahead_disk_mb: int = Field(
        default=10240,
        ge=0,
        description="Stage a job only while PATH_BASE has this much more free than MIN_FREE_DISK_MB"
        " for each staged job not started yet, the new one included (room for its inputs beside"
        " the running job's outputs)",
    )

    # --- containers ------------------------------------------------------------------------------
    image_pull_policy: PullPolicy = Field(
        default="auto",
        description="auto: pull `:latest` (and untagged) images every time, others if not present",
    )
    shm_size: str = Field(default="8g", pattern=r"^\d+[bkmg]?$")
    ipc_host: bool = False
    enforce_job_limits: bool = Field(
        default=True, description="Limit each container to its job's cpu_cores and memory"
    )
    job_pids_limit: int = Field(
        default=4096, ge=0, description="Most processes and threads in a job container; 0 = none"
    )
    job_engine_log_max_mb: int = Field(
        default=20, ge=1, description="Docker's json-file log of a job container is kept this small"
    )
    job_log_max_mb: float = Field(
        default=100.0, gt=0, description="Most of a job's output kept and uploaded as container.log"
    )
    job_output_max_files: int = Field(
        default=100_000,
        ge=1,
        description="Most files and directories a job may leave to upload; more ends it `error`",
    )
    job_output_max_mb: float = Field(
        default=102400.0, ge=0, description="Most MB a job may leave to upload; 0 = no limit"
    )
    job_cap_drop: str = Field(
        default="MKNOD,NET_RAW",
        description="Capabilities taken from job containers (comma-separated)",
    )
    job_network: str = Field(
        default="",
        description="Docker network of job containers (`none`: no network); empty = default",
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

    # --- running for weeks: metrics, log format, image pruning (issue 11) ----------------------
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus /metrics on this port; unset: off",
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address /metrics listens on")
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: one readable line; json: one JSON object per line"
    )
    image_keep_days: float | None = Field(
        default=None, gt=0, description="Remove job images not used for this many days; unset: off"
    )
    image_cache_max_gb: float | None = Field(
        default=None,
        gt=0,
        description="Remove the least recently used job images while they take more (GB = 10^9"
        " bytes); unset: off",
    )
    image_prune_interval_s: float = Field(
        default=3600.0, gt=0, description="How often the image pruning policy runs"
    )
    image_refresh_interval_s: float = Field(
        default=1800.0,
        ge=0,
        description="How often the `:latest` (and untagged) images of recent jobs are pulled again"
        " in the background, so that a moved tag is not pulled in a job's time; 0 = off (also off"
        " with IMAGE_PULL_POLICY=if-not-present or never)",
    )
    image_refresh_within_days: float = Field(
        default=7.0, gt=0, description="Refresh only images a job used within this many days"
    )

    _ignored_username: str | None = PrivateAttr(default=None)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """`NAME=` in a .env file (as .env.example ships several) means unset: the default of a
        setting that may be unset, never `.` for a path or an error for a number."""
        if value == "" and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and field.default is None and not field.is_required():
                return None
        return value

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        if self.access_token is not None and not self.access_token.get_secret_value().strip():
            self.access_token = None  # `ACCESS_TOKEN=` in a .env file means unset
        if self.username is not None and not self.username.strip():
            self.username = None
        if self.access_token is not None:
            # the token wins: login shells often export USERNAME, and it must not stop the start
            self._ignored_username = self.username
            self.username, self.password = None, None
            return self
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
        return [g.strip() for g in self.job_groups.split(",") if g.strip()]

    @property
    def ignored_username(self) -> str | None:
        """USERNAME as given when ACCESS_TOKEN is set too (the token wins; USERNAME/PASSWORD are unset)."""
        return self._ignored_username

    @property
    def gpu_selection(self) -> list[str]:
        return [g.strip() for g in self.gpus.split(",") if g.strip()]

    @property
    def xid_ignored(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.gpu_xid_ignored.replace(" ", "").split(",") if x)

    @property
    def job_cap_drop_list(self) -> list[str]:
        return [c.strip().upper() for c in self.job_cap_drop.split(",") if c.strip()]

    @property
    def state_dir(self) -> StateDir:
        """Where the fetcher keeps its own state (job store, heartbeat, id, container logs)."""
        return StateDir.of(self.path_base)


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
