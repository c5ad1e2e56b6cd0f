"""One exception hierarchy for everything the fetcher can raise on purpose.

FetcherError
├── ConfigError                 a setting is missing or wrong
├── ApiError                    the worker-facing API said no, or could not be reached
│   ├── ApiUnavailable          transient failures (connection, timeout, 429, 5xx) outlived the retries
│   ├── AuthError               401/403, or the login itself failed
│   ├── JobGone                 404 on a job: it is no longer this worker's; stop working on it
│   ├── ApiRejected             any other 4xx: the request was wrong; retrying will not help
│   └── BadResponse             the answer could not be understood
├── Interrupted                 a wait was cut short because the caller asked to stop
├── WorkerTrouble               this box, not the job, is at fault (engine, disk, GPU runtime):
│                               the job is handed back to the queue for another worker
└── JobError                    the job cannot be (or was not) completed; carries the reason for `error`
    ├── InvalidJobSpec          the job spec is malformed or unsafe (names the job and the field)
    ├── TransferError           an input could not be downloaded or an output not uploaded
    └── ContainerError          the image could not be pulled, or the container not created/started
"""

from __future__ import annotations


class FetcherError(Exception):
    """Base of every error the fetcher raises on purpose."""


class ConfigError(FetcherError):
    """A setting is missing or has a wrong value."""


class ApiError(FetcherError):
    """The worker-facing API answered with an error, or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ApiUnavailable(ApiError):
    """Connection errors, timeouts, 429 or 5xx went on for longer than the retry budget."""


class AuthError(ApiError):
    """Not authenticated or not allowed (401/403), or the login failed."""


class JobGone(ApiError):
    """The job is no longer this worker's (404 on a job): stop working on it at once."""


class ApiRejected(ApiError):
    """A 4xx other than 401/403/404/429: the request itself was wrong."""


class BadResponse(ApiError):
    """The API answered something the fetcher cannot understand."""


class Interrupted(FetcherError):
    """A wait or a transfer was cut short because a stop was requested."""


class WorkerTrouble(FetcherError):
    """This box, not the job, is at fault (the engine, the disk, the GPU runtime, a mount): the
    job is handed back so that another worker can run it."""


class JobError(FetcherError):
    """The job could not be completed; the message is the reason reported with `error`."""


class InvalidJobSpec(JobError):
    """A job spec is malformed or unsafe."""

    def __init__(self, job_id: str, field: str, problem: str) -> None:
        super().__init__(f"job {job_id}: invalid job spec: {field}: {problem}")
        self.job_id = job_id
        self.field = field
        self.problem = problem


class TransferError(JobError):
    """An input could not be downloaded, or an output could not be uploaded."""


class ContainerError(JobError):
    """The image could not be pulled, or the container could not be created or started."""
