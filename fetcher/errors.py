"""One exception hierarchy for everything the fetcher raises on purpose, and the one place that
says what a failure means.

Each class knows whose fault it is (`fault`: the job's own, this worker's, or the job is gone) and
its reason class (`reason`, the `fetcher_job_failures_total{reason}` label), as docker-py's
`APIError` answers `is_client_error()`: the code that raises picks the class (or passes a
`reason`), and everything else reads the attributes (`classify`). Failures of other libraries
(an `OSError` from this box's disk, a bug) are given their meaning by `as_fetcher_error`.

FetcherError                    fault   reason
├── ConfigError                 worker  worker   a setting is missing or wrong
├── ApiError                    worker  worker   the worker-facing API said no, or could not be reached
│   ├── ApiUnavailable          worker  worker   transient failures (connection, 429, 5xx) outlived the retries
│   ├── AuthError               worker  worker   401/403, or the login itself failed
│   ├── JobGone                 gone    worker   404 on a job: it is no longer this worker's
│   ├── ApiRejected             worker  worker   any other 4xx: the request was wrong
│   └── BadResponse             worker  worker   the answer could not be understood
├── Interrupted                 worker  worker   a wait was cut short because the caller asked to stop
├── WorkerTrouble               worker  worker   this box (engine, disk, GPU runtime): hand the job back
└── JobError                    job     other    the job cannot be completed; the message is the reason
    ├── InvalidJobSpec          job     invalid_spec
    ├── TransferError           job     transfer  an input the server cannot send, an output refused
    └── ContainerError          job     container the container could not be created or started
                                        (reason `image` when its image could not be had)
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Self


class Fault(StrEnum):
    """Whose fault a failure is, which decides what the job gets (see `fetcher.outcome`)."""

    job = "job"  # the job's own doing: reported `error`
    worker = "worker"  # this box's: the job is handed back (or `error`, by ON_WORKER_FAILURE)
    gone = "gone"  # the server no longer has the job for this worker: nothing is reported
    nobody = "nobody"  # a job staged ahead and never started: always handed back


class Reason(StrEnum):
    """Why a job ended in `error` (`fetcher_job_failures_total{reason}`).

    invalid_spec: the job spec is malformed or unsafe; transfer: an input could not be downloaded
    or an output not uploaded; image: the image could not be pulled; container: the container
    could not be created or started, or the engine failed while it ran; exit_code: the job exited
    non-zero; oom: the job was killed for running out of memory; time_limit: the job ran past its
    time limit; worker: the fetcher stopped or restarted under the job, or this box failed; other:
    anything else."""

    invalid_spec = "invalid_spec"
    transfer = "transfer"
    image = "image"
    container = "container"
    exit_code = "exit_code"
    oom = "oom"
    time_limit = "time_limit"
    worker = "worker"
    other = "other"


class FetcherError(Exception):
    """Base of every error the fetcher raises on purpose."""

    fault: ClassVar[Fault] = Fault.worker
    default_reason: ClassVar[Reason] = Reason.worker
    #: how an API call that ended with this error is counted (`fetcher_api_calls_total{outcome}`)
    default_api_label: ClassVar[str] = "error"

    def __init__(
        self, message: str = "", *, reason: Reason | None = None, api_label: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason or self.default_reason
        self.api_label: str = api_label or self.default_api_label

    def named(self, subject: str) -> Self:
        """The same failure, its message starting with what it is about (`input a/b: ...`)."""
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        clone.args = (f"{subject}: {self}",)
        return clone

    def detail(self, job_id: str) -> str:
        """The message as a job's report shows it (without a leading `job <id>: `)."""
        return str(self).removeprefix(f"job {job_id}: ")


class ConfigError(FetcherError):
    """A setting is missing or has a wrong value."""


class ApiError(FetcherError):
    """The worker-facing API answered with an error, or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ApiUnavailable(ApiError):
    """Connection errors, timeouts, 429 or 5xx went on for longer than the retry budget."""

    default_api_label = "unavailable"


class AuthError(ApiError):
    """Not authenticated or not allowed (401/403), or the login failed."""

    default_api_label = "auth"


class JobGone(ApiError):
    """The job is no longer this worker's (404 on a job): stop working on it at once."""

    fault = Fault.gone
    default_api_label = "gone"


class ApiRejected(ApiError):
    """A 4xx other than 401/403/404/429: the request itself was wrong."""

    default_api_label = "rejected"


class BadResponse(ApiError):
    """The API answered something the fetcher cannot understand."""

    default_api_label = "bad_response"


class Interrupted(FetcherError):
    """A wait or a transfer was cut short because a stop was requested."""


class WorkerTrouble(FetcherError):
    """This box, not the job, is at fault (the engine, the disk, the GPU runtime, a mount): the
    job is handed back so that another worker can run it. `gpu_related`: the failure is the GPU's
    (its runtime failed to give it to the container), which counts towards its quarantine;
    `lasting` False: an expected, passing event (an engine restart), which counts for nothing."""

    def __init__(
        self, message: str = "", *, gpu_related: bool = False, lasting: bool = True
    ) -> None:
        super().__init__(message)
        self.gpu_related = gpu_related
        self.lasting = lasting


class NotStarted(FetcherError):
    """A job staged ahead (STAGE_AHEAD) that this worker gives back before it ever started: its
    share stayed busy past the bound, its GPU was quarantined, the worker stops. Nobody's fault:
    it is handed back whatever ON_WORKER_FAILURE says (reporting `error` would end a job that
    never ran)."""

    fault = Fault.nobody


class JobError(FetcherError):
    """The job could not be completed; the message is the reason reported with `error`."""

    fault = Fault.job
    default_reason = Reason.other


class InvalidJobSpec(JobError):
    """A job spec is malformed or unsafe."""

    default_reason = Reason.invalid_spec

    def __init__(self, job_id: str, field: str, problem: str) -> None:
        super().__init__(f"job {job_id}: invalid job spec: {field}: {problem}")
        self.job_id = job_id
        self.field = field
        self.problem = problem

    def detail(self, job_id: str) -> str:
        return f"invalid job spec: {self.field}: {self.problem}"


class TransferError(JobError):
    """An input could not be downloaded, or an output could not be uploaded: the server refused
    the file, or its answer about it was unusable."""

    default_reason = Reason.transfer
    default_api_label = "rejected"


class ContainerError(JobError):
    """The image could not be pulled (`reason` image), or the container could not be created or
    started (`reason` container)."""

    default_reason = Reason.container


def as_fetcher_error(exc: BaseException) -> FetcherError | None:
    """What a failure means in the fetcher's terms: a FetcherError as it is; an OSError (this
    box's disk, a lost mount) as WorkerTrouble; None for anything else (a bug)."""
    if isinstance(exc, FetcherError):
        return exc
    if isinstance(exc, OSError):
        return WorkerTrouble(f"this box's file system: {exc.strerror or exc}")
    return None


def classify(exc: BaseException) -> tuple[Fault, Reason]:
    """Whose fault a failure is and its reason class. A bug of the fetcher is this worker's."""
    err = as_fetcher_error(exc)
    if err is None:
        return Fault.worker, Reason.worker
    return err.fault, err.reason


def api_label(exc: BaseException | None) -> str:
    """How an API call that ended with `exc` is counted: `ok`, or the error's api label."""
    if exc is None:
        return "ok"
    return exc.api_label if isinstance(exc, FetcherError) else "error"
