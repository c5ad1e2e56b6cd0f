"""The mock server's state: job queue, matching and ordering, statuses, keep-alive timeout, tokens.

Pure Python and thread-safe (one lock); the FastAPI app in `app.py` is a thin layer over it, and
tests may inspect it directly when the server runs in-process.

As on the real server, a job is kept as the JSON it was submitted with (never re-serialised through
the fetcher's models), the server keeps the list of workers that claimed a job, and the last of them
owns it: its status PUTs are accepted whatever the job's status, anyone else's answer 404.
"""

from __future__ import annotations

import copy
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from fetcher.models import JobStatus, PathsUploadSpecs, SubmittedJob, UploadType

ACTIVE = (JobStatus.pulled, JobStatus.preprocessing, JobStatus.running, JobStatus.postprocessing)


class MockConfig(BaseModel):
    failure_timeout_s: float = 300.0  # TIMEOUT_FAILURE of the real server
    check_interval_s: float = 60.0
    retry_limit: int = 2  # MAX_RETRIES: re-queues after a keep-alive timeout before `error`
    retry_different: bool = True  # RETRY_DIFFERENT: a worker never claims a job twice
    token_expiry_s: float = 3600.0


class Submission(BaseModel):
    """Body of `POST /_jobs`. Only the envelope is checked: `job` may be any JSON, kept as given."""

    model_config = ConfigDict(extra="allow")

    job: JsonValue
    environment: str | None = None
    group: str | None = None
    priority: int | None = None
    paths_upload: PathsUploadSpecs


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
    download_bytes_per_s: int = Field(
        default=0, ge=0, description="file downloads at this rate (slow storage); 0 = unthrottled"
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
    job: Any  # the job spec: the JSON it was submitted with, handed out as is
    paths_upload: dict[str, str]
    group: str | None
    priority: int
    environment: str | None
    created: float
    status: JobStatus = JobStatus.queued
    workers: list[str] = field(default_factory=list)  # who claimed it, in order
    last_update: float = 0.0
    attempts: int = 0  # claims
    retries: int = 0  # re-queues after a keep-alive timeout (the real server's num_retries)
    deleted: bool = False  # the user deleted it; the server learns it at its next status change
    gone: bool = False  # ... and has learnt it: the job is no more (500 for a status PUT)
    history: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)

    @property
    def worker(self) -> str | None:
        """The worker that owns the job: the last one that claimed it (also after a re-queue)."""
        return self.workers[-1] if self.workers else None

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
            "workers": self.workers,
            "attempts": self.attempts,
            "retries": self.retries,
            "deleted": self.deleted,
            "group": self.group,
            "priority": self.priority,
            "history": self.history,
            "uploads": self.uploads,
            "claims": self.claims,
            "job": self.job,
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
        self.upload_grants: dict[str, tuple[int, str, str, str]] = {}
        self.s3_grants: set[str] = set()
        self.requests_seen = 0
        # tests only: called (in a worker thread) with the job id before an upload is stored
        self.upload_gate: Callable[[int], None] | None = None
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
        """Submit a job built with the fetcher's models (its JSON is what the queue keeps)."""
        return self.submit_raw(sub.model_dump(mode="json"))

    def submit_raw(self, body: Any) -> MockJob:
        """Submit a `POST /_jobs` body. `job` is kept exactly as given, whatever its shape, so that
        tests can hand out anything a server could send. A malformed envelope raises 422."""
        try:
            sub = Submission.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(body)"
            raise ApiFailure(422, f"{loc}: {err['msg']}") from None
        paths = {k: v for k, v in sub.paths_upload.model_dump().items() if v}
        if "output" not in paths or "log" not in paths:
            raise ApiFailure(422, "paths_upload: output and log must name directories")
        paths.setdefault("artifact", paths["output"])
        for kind, path in paths.items():
            self.check_upload_root(path, f"paths_upload.{kind}")
        with self.lock:
            job = MockJob(
                id=self.next_id,
                job=copy.deepcopy(body["job"]),
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
        """The user deletes the job. The server learns it at the job's next status change: the
        owner's next PUT (or a claim, or a keep-alive timeout); that PUT answers 404, every later
        one 500 (the job is no more)."""
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
    ) -> dict[int, Any]:
        """Hand out up to `limit` queued jobs that fit, as the JSON they were submitted with."""
        offer = {
            "cpu_cores": cpu_cores,
            "memory": memory,
            "gpu_mem": gpu_mem,
            "gpu_model": gpu_model,
            "gpu_archi": gpu_archi,
        }
        now = time.time()
        with self.lock:
            candidates = []
            for job in self.jobs.values():
                if job.status != JobStatus.queued or job.gone:
                    continue
                if self.config.retry_different and worker in job.workers:
                    continue
                if now - job.created < older_than:
                    continue
                if self.faults.ignore_hardware or fits(job.job, offer):
                    candidates.append(job)
            candidates.sort(key=lambda j: (j.group not in groups, -j.priority, j.created, j.id))
            given: dict[int, Any] = {}
            for job in candidates:
                if len(given) >= limit:
                    break
                if job.deleted:  # taking it tells the server of the deletion: it is dropped
                    job.gone = True
                    continue
                job.workers.append(worker)
                job.attempts += 1
                job.claims.append({"worker": worker, **offer})
                job.record(JobStatus.pulled, None, worker)
                given[job.id] = job.job
            return given

    def put_status(self, worker: str, job_id: int, status: JobStatus, details: str | None) -> None:
        """Accepted from the job's last claimer whatever the job's status (a job re-queued after a
        keep-alive timeout, or handed back, is silently put back); 404 for anyone else; 404 once
        after a user deletion, then 500 as for an unknown id."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.gone:
                raise ApiFailure(500)
            if job.worker != worker:
                raise ApiFailure(404, "Not Found")
            if job.deleted:
                job.gone = True
                raise ApiFailure(404, "Not Found")
            job.record(status, details, worker)

    def get_status(self, job_id: int) -> JobStatus:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.deleted or job.gone:
                raise ApiFailure(404, "Not Found")
            return job.status

    def check_timeouts(self) -> None:
        """Re-queue jobs whose worker went silent, at most `retry_limit` times, then fail them. The
        workers list is kept: the silent worker still owns a re-queued job until another claims it."""
        now = time.time()
        with self.lock:
            for job in self.jobs.values():
                if job.gone or job.status not in ACTIVE:
                    continue
                if now - job.last_update <= self.config.failure_timeout_s:
                    continue
                if job.deleted:  # the status change tells the server of the deletion
                    job.gone = True
                elif job.retries < self.config.retry_limit:
                    job.retries += 1
                    workers = ";".join(job.workers)
                    job.record(
                        JobStatus.queued, f"timeout {job.retries} (workers tried: {workers})", None
                    )
                else:
                    job.record(JobStatus.error, "max retries reached", None)

    # --- files ---------------------------------------------------------------------------------
    def check_in_store(self, path: str, what: str) -> Path:
        """Unlike the real server, refuse `..` and anything outside the data root (403)."""
        if ".." in path.split("/"):
            raise ApiFailure(403, f"{what}: '..' is not allowed")
        if path != self.data_root and not path.startswith(self.data_root.rstrip("/") + "/"):
            raise ApiFailure(403, f"{what}: outside the user's store")
        return Path(path)

    def s3_path(self, file_id: str) -> Path:
        """Where the fake S3 keeps `s3://bucket/key`: `<data root>/_s3/bucket/key`."""
        rest = file_id.removeprefix("s3://")
        if ".." in rest.split("/") or not rest.strip("/"):
            raise ApiFailure(403, "file id: '..' is not allowed")
        return Path(self.data_root) / "_s3" / rest

    def check_upload_root(self, path: str, what: str) -> None:
        """An upload directory is a store path, or an `s3://bucket/prefix` of the fake S3."""
        if path.startswith("s3://"):
            self.s3_path(path)
        else:
            self.check_in_store(path, what)

    def upload_dir(self, worker: str, job_id: int, kind: str, base_path: str) -> str:
        """`<paths_upload[kind]>/<base_path>`, where the file of an upload URL lands (as the real
        server joins them: an absolute base_path replaces the directory, and is then refused).
        Raises 422 for a wrong type, 500 for a job that is not this worker's, 403 outside the store."""
        if kind not in {t.value for t in UploadType}:
            raise ApiFailure(422, f"type: must be one of output, log, artifact, not {kind!r}")
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.gone or job.worker != worker:
                raise ApiFailure(500)
            root = job.paths_upload[kind]
        path = os.path.join(root, base_path)  # noqa: PTH118 (keeps s3:// whole, as the server does)
        if root.startswith("s3://") and not path.startswith("s3://"):
            raise ApiFailure(403, "Path should start with s3://")
        self.check_upload_root(path, "base_path")
        return path

    def grant_s3_post(self, job_id: int, kind: str, base_path: str, path: str) -> tuple[str, str]:
        """A pre-signed POST for `path` (an s3:// directory): (bucket, key prefix) and a policy."""
        bucket, _, prefix = path.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        policy = secrets.token_urlsafe(16)
        with self.lock:
            self.upload_grants[policy] = (job_id, kind, base_path, f"{bucket}/{prefix}")
        return policy, prefix

    def record_upload(
        self, job_id: int, kind: str, base_path: str, directory: Path, filename: str, size: int
    ) -> Path:
        """Where an upload lands, `<upload dir of its type>/<base_path>/<filename>`, recorded."""
        if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise ApiFailure(400, f"filename {filename!r}: must be a plain file name")
        dest = directory / filename
        with self.lock:
            self.jobs[job_id].uploads.append(
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
            # on the monotonic clock: a step of the wall clock (a clock sync) must not cut an
            # outage short
            self._down_until = time.monotonic() + faults.down_for_s if faults.down_for_s else 0.0
            self._rng = random.Random(faults.seed)

    def next_fault(self) -> tuple[float, int | None]:
        """(delay, status) for the next worker-facing request: status 0 = drop the connection."""
        with self.lock:
            self.requests_seen += 1
            f = self.faults
            if time.monotonic() < self._down_until:
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


def fits(job: Any, offer: dict[str, Any]) -> bool:
    """Whether a job (its JSON as submitted) fits a worker's offer: each requirement must be at most
    what is offered (cpu_cores, memory, gpu_mem) or equal to it (gpu_model, gpu_archi). Read
    defensively: a missing or null requirement matches anyone, as on the real server, and so does
    one of a shape no real server would store (the fetcher has to refuse that job)."""
    hardware = job.get("hardware") if isinstance(job, dict) else None
    if not isinstance(hardware, dict):
        return True
    for key in ("cpu_cores", "memory", "gpu_mem"):
        need = _number(hardware.get(key))
        if need is not None and need > offer[key]:
            return False
    for key in ("gpu_model", "gpu_archi"):
        want = hardware.get(key)
        if want is not None and want != offer[key]:
            return False
    return True


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
