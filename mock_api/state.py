"""The mock server's state: job queue, matching and ordering, statuses, keep-alive timeout, tokens.

Pure Python and thread-safe (one lock); the FastAPI app in `app.py` is a thin layer over it, and
tests may inspect it directly when the server runs in-process.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fetcher.models import JobSpecs, JobStatus, SubmittedJob, UploadType

ACTIVE = (JobStatus.pulled, JobStatus.preprocessing, JobStatus.running, JobStatus.postprocessing)


class MockConfig(BaseModel):
    failure_timeout_s: float = 300.0
    check_interval_s: float = 60.0
    retry_limit: int = 3
    token_expiry_s: float = 3600.0


class Faults(BaseModel):
    """Fault injection, switched on per run with `POST /_faults` (applies to worker-facing routes)."""

    error_rate: float = Field(default=0.0, ge=0, le=1, description="share of 500s")
    throttle_rate: float = Field(default=0.0, ge=0, le=1, description="share of 429s")
    drop_rate: float = Field(default=0.0, ge=0, le=1, description="share of dropped connections")
    delay_s: float = Field(default=0.0, ge=0, description="slow answers: wait before each")
    down_for_s: float = Field(default=0.0, ge=0, description="drop every request for this long")
    fail_next: list[int] = Field(
        default_factory=list, description="next answers: status codes, 0 = drop"
    )
    ignore_hardware: bool = Field(
        default=False, description="hand out jobs without matching hardware"
    )
    seed: int | None = None


class ApiFailure(Exception):
    """An answer other than success: the app turns it into the real server's response."""

    def __init__(
        self, status: int, detail: str | None = None, cognito_type: str | None = None
    ) -> None:
        super().__init__(detail or str(status))
        self.status = status
        self.detail = detail
        self.cognito_type = cognito_type  # answered in Cognito's error shape when set


@dataclass
class MockJob:
    id: int
    spec: JobSpecs
    paths_upload: dict[str, str]
    group: str | None
    priority: int
    environment: str | None
    created: float
    status: JobStatus = JobStatus.queued
    worker: str | None = None
    last_update: float = 0.0
    attempts: int = 0
    deleted: bool = False
    gone_answered: bool = False
    handed_back_by: set[str] = field(default_factory=set)
    history: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)

    def record(self, status: JobStatus, details: str | None, worker: str | None) -> None:
        self.status = status
        self.last_update = time.time()
        self.history.append(
            {
                "time": self.last_update,
                "status": status.value,
                "runtime_details": details,
                "worker": worker,
            }
        )

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "worker": self.worker,
            "attempts": self.attempts,
            "deleted": self.deleted,
            "group": self.group,
            "priority": self.priority,
            "history": self.history,
            "uploads": self.uploads,
            "claims": self.claims,
            "job": self.spec.model_dump(mode="json"),
            "paths_upload": self.paths_upload,
        }


@dataclass
class Token:
    user: str
    groups: list[str]
    expires_at: float | None


class MockState:
    def __init__(
        self, data_root: str, api_key: str, worker_tokens: list[str] | None = None
    ) -> None:
        self.data_root = data_root.rstrip("/") or "/"
        Path(self.data_root).mkdir(parents=True, exist_ok=True)
        self.api_key = api_key
        self.lock = threading.RLock()
        self.config = MockConfig()
        self.faults = Faults()
        self.jobs: dict[int, MockJob] = {}
        self.next_id = 1
        self.tokens: dict[str, Token] = {
            t: Token(f"worker-{i}" if i else "worker", ["workers"], None)
            for i, t in enumerate(worker_tokens or [])
        }
        self.users: dict[str, tuple[str, list[str]]] = {}
        self.refresh_tokens: dict[str, str] = {}
        self.upload_grants: dict[str, tuple[int, str, str]] = {}
        self.s3_grants: set[str] = set()
        self.requests_seen = 0
        self._down_until = 0.0
        self._rng = random.Random()

    # --- auth ---------------------------------------------------------------------------------
    def add_user(self, name: str, password: str, groups: list[str]) -> None:
        with self.lock:
            self.users[name] = (password, groups)

    def authenticate(self, authorization: str | None) -> Token:
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiFailure(401, "Not authenticated")
        with self.lock:
            token = self.tokens.get(authorization.removeprefix("Bearer ").strip())
            if token is None or (token.expires_at is not None and token.expires_at < time.time()):
                raise ApiFailure(401, "Not verified")
        if "workers" not in token.groups:
            raise ApiFailure(403, "Not a member of the 'workers' group")
        return token

    def initiate_auth(self, body: dict[str, Any]) -> dict[str, Any]:
        flow = body.get("AuthFlow")
        params = body.get("AuthParameters") or {}
        with self.lock:
            if flow == "USER_PASSWORD_AUTH":
                user = self.users.get(params.get("USERNAME", ""))
                if user is None or user[0] != params.get("PASSWORD"):
                    raise ApiFailure(
                        400, "Incorrect username or password.", "NotAuthorizedException"
                    )
                name = params["USERNAME"]
                refresh = secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = name
            elif flow == "REFRESH_TOKEN_AUTH":
                found = self.refresh_tokens.get(params.get("REFRESH_TOKEN", ""))
                if found is None:
                    raise ApiFailure(400, "Invalid Refresh Token", "NotAuthorizedException")
                name, refresh = found, ""
            else:
                raise ApiFailure(400, f"AuthFlow {flow} is not supported", "NotAuthorizedException")
            id_token = "mock-id-" + secrets.token_urlsafe(24)
            expiry = self.config.token_expiry_s
            self.tokens[id_token] = Token(name, self.users[name][1], time.time() + expiry)
        result: dict[str, Any] = {
            "IdToken": id_token,
            "AccessToken": "mock-access-" + secrets.token_urlsafe(8),
            "ExpiresIn": int(expiry) if expiry >= 1 else expiry,
            "TokenType": "Bearer",
        }
        if refresh:
            result["RefreshToken"] = refresh
        return {"AuthenticationResult": result, "ChallengeParameters": {}}

    # --- submission and inspection ----------------------------------------------------------
    def submit(self, sub: SubmittedJob) -> MockJob:
        paths = {k: v for k, v in sub.paths_upload.model_dump().items() if v}
        paths.setdefault("artifact", paths["output"])
        for kind, path in paths.items():
            self.check_in_store(path, f"paths_upload.{kind}")
        with self.lock:
            job = MockJob(
                id=self.next_id,
                spec=sub.job,
                paths_upload=paths,
                group=sub.group,
                priority=sub.priority or 0,
                environment=sub.environment,
                created=time.time(),
            )
            job.record(JobStatus.queued, None, None)
            self.jobs[job.id] = job
            self.next_id += 1
            return job

    def delete(self, job_id: int) -> None:
        """The user deletes the job: the next status PUT answers 404, the one after 500."""
        with self.lock:
            self._job(job_id).deleted = True

    def reset(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.faults = Faults()
            self._down_until = 0.0
            self.config = MockConfig()

    def _job(self, job_id: int) -> MockJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiFailure(404, "Job not found")
        return job

    # --- the worker's calls --------------------------------------------------------------------
    def claim(
        self,
        worker: str,
        *,
        memory: int,
        cpu_cores: int,
        gpu_mem: int,
        gpu_model: str | None,
        gpu_archi: str | None,
        groups: list[str],
        limit: int,
        older_than: float,
    ) -> dict[int, JobSpecs]:
        now = time.time()
        with self.lock:
            candidates = []
            for job in self.jobs.values():
                hw = job.spec.hardware
                if job.status != JobStatus.queued or job.deleted or worker in job.handed_back_by:
                    continue
                if now - job.created < older_than:
                    continue
                if self.faults.ignore_hardware:
                    candidates.append(job)
                    continue
                if (
                    (hw.cpu_cores or 0) > cpu_cores
                    or (hw.memory or 0) > memory
                    or (hw.gpu_mem or 0) > gpu_mem
                ):
                    continue
                if hw.gpu_model is not None and hw.gpu_model != gpu_model:
                    continue
                if hw.gpu_archi is not None and hw.gpu_archi != gpu_archi:
                    continue
                candidates.append(job)
            candidates.sort(key=lambda j: (j.group not in groups, -j.priority, j.created, j.id))
            given: dict[int, JobSpecs] = {}
            for job in candidates[: max(limit, 0)]:
                job.worker = worker
                job.attempts += 1
                job.claims.append(
                    {
                        "worker": worker,
                        "memory": memory,
                        "cpu_cores": cpu_cores,
                        "gpu_mem": gpu_mem,
                        "gpu_model": gpu_model,
                        "gpu_archi": gpu_archi,
                    }
                )
                job.record(JobStatus.pulled, None, worker)
                given[job.id] = job.spec
            return given

    def put_status(self, worker: str, job_id: int, status: JobStatus, details: str | None) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiFailure(500)
            if job.deleted:
                if job.gone_answered:
                    raise ApiFailure(500)
                job.gone_answered = True
                raise ApiFailure(404, "Job not found")
            if job.worker != worker or job.status == JobStatus.queued:
                raise ApiFailure(404, "Job not found")
            job.record(status, details, worker)
            if status == JobStatus.queued:
                job.worker = None
                job.handed_back_by.add(worker)

    def get_status(self, job_id: int) -> JobStatus:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.deleted:
                raise ApiFailure(404, "Job not found")
            return job.status

    def check_timeouts(self) -> None:
        """Re-queue (or fail, past the retry limit) jobs whose worker went silent."""
        now = time.time()
        with self.lock:
            for job in self.jobs.values():
                if job.deleted or job.status not in ACTIVE:
                    continue
                if now - job.last_update <= self.config.failure_timeout_s:
                    continue
                if job.attempts >= self.config.retry_limit:
                    job.record(
                        JobStatus.error, "no keep-alive from the worker; retry limit reached", None
                    )
                else:
                    job.record(JobStatus.queued, "no keep-alive from the worker; re-queued", None)
                job.worker = None

    # --- files ---------------------------------------------------------------------------------
    def check_in_store(self, path: str, what: str) -> Path:
        """Unlike the real server, refuse `..` and anything outside the data root (403)."""
        if ".." in path.split("/"):
            raise ApiFailure(403, f"{what}: '..' is not allowed")
        if path != self.data_root and not path.startswith(self.data_root.rstrip("/") + "/"):
            raise ApiFailure(403, f"{what}: outside the user's store")
        return Path(path)

    def s3_path(self, file_id: str) -> Path:
        rest = file_id.removeprefix("s3://")
        if ".." in rest.split("/") or not rest:
            raise ApiFailure(403, "file id: '..' is not allowed")
        return Path(self.data_root) / "_s3" / rest

    def grant_upload(
        self, worker: str, job_id: int, kind: str, base_path: str | None
    ) -> tuple[str, str]:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.deleted or job.worker != worker:
                raise ApiFailure(500)
        if kind not in {t.value for t in UploadType}:
            raise ApiFailure(422, f"type: must be one of output, log, artifact, not {kind!r}")
        if base_path and base_path.startswith("/"):
            raise ApiFailure(403, "base_path: absolute paths are not allowed")
        if base_path and ".." in base_path.split("/"):
            raise ApiFailure(403, "base_path: '..' is not allowed")
        policy = secrets.token_urlsafe(16)
        with self.lock:
            self.upload_grants[policy] = (job_id, kind, base_path or "")
        return policy, job.paths_upload[kind]

    def store_upload(self, policy: str, filename: str, size: int) -> Path:
        """Where an upload lands: `<upload dir of its type>/<base_path>/<filename>`."""
        if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise ApiFailure(400, f"filename {filename!r}: must be a plain file name")
        with self.lock:
            grant = self.upload_grants.get(policy)
            if grant is None:
                raise ApiFailure(403, "upload policy unknown or used")
            job_id, kind, base_path = grant
            job = self.jobs[job_id]
            dest = Path(job.paths_upload[kind], base_path, filename)
            job.uploads.append(
                {
                    "type": kind,
                    "base_path": base_path,
                    "filename": filename,
                    "path": str(dest),
                    "size": size,
                }
            )
            return dest

    # --- faults --------------------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults
            self._down_until = time.time() + faults.down_for_s if faults.down_for_s else 0.0
            self._rng = random.Random(faults.seed)

    def next_fault(self) -> tuple[float, int | None]:
        """(delay, status) for the next worker-facing request: status 0 = drop the connection."""
        with self.lock:
            self.requests_seen += 1
            f = self.faults
            if time.time() < self._down_until:
                return f.delay_s, 0
            if f.fail_next:
                return f.delay_s, f.fail_next.pop(0)
            roll = self._rng.random()
            if roll < f.drop_rate:
                return f.delay_s, 0
            if roll < f.drop_rate + f.error_rate:
                return f.delay_s, 500
            if roll < f.drop_rate + f.error_rate + f.throttle_rate:
                return f.delay_s, 429
            return f.delay_s, None
