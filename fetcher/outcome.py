"""How a job ended, and so what is reported: the one place that decides between `finished`,
`error`, a hand-back and "gone".

- The container ran to its end: `finished` on exit code 0, else `error` with how it ended.
- A step failed: the failure's `fault` decides (see `fetcher.errors`). The job's own fault is
  `error`; this worker's is a hand-back (`queued`, or `error` with ON_WORKER_FAILURE=error); a job
  the server no longer has for us is `gone` (nothing is reported). A job stopped because the
  worker shuts down is handed back whatever the failure its stop caused; a staged job that never
  started (nobody's fault) is handed back whatever ON_WORKER_FAILURE says, be it stopped, given
  up, or found by crash recovery (`after_restart`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from fetcher.cancel import Cancel
from fetcher.engine.container import RunResult
from fetcher.errors import Fault, FetcherError, Reason, WorkerTrouble, as_fetcher_error
from fetcher.lifecycle import OutcomeKind
from fetcher.models import JobStatus

log = logging.getLogger(__name__)

WorkerFailurePolicy = Literal["hand-back", "error"]


class Trouble(StrEnum):
    """Whether a failure was this box's lasting trouble (see `fetcher.quarantine`): `gpu` (the
    job's GPU could not be given to it), `box` (the engine, the disk, the driver, a bug), or
    `none` (the job's own fault, a stop, an outage of the API)."""

    none = "none"
    box = "box"
    gpu = "gpu"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    details: str  # runtime_details: the first line says how the job ended
    reason: Reason = Reason.other  # for an error: its class
    fault: Fault = Fault.job
    trouble: Trouble = Trouble.none
    ran: bool = False  # the job's container ran (to its end, or until it was stopped)
    container_left: str | None = None  # a container the engine would not remove (may hold a GPU)

    @property
    def status(self) -> JobStatus | None:
        return self.kind.status

    @property
    def first_line(self) -> str:
        return self.details.splitlines()[0] if self.details else ""


def of_run(result: RunResult) -> Outcome:
    """The outcome of a container that ran to its end (or was stopped at its time limit)."""
    if result.exit_code == 0 and not result.ended_by:
        details = "exit_code: 0" + (f"\n{result.gpu_line}" if result.gpu_line else "")
        return Outcome(OutcomeKind.finished, details, ran=True)
    reason = (
        Reason.oom
        if result.oom_killed
        else Reason.time_limit
        if result.ended_by
        else Reason.exit_code
    )
    return Outcome(OutcomeKind.error, result.describe(), reason, ran=True)


def failed(
    text: str,
    result: RunResult | None,
    reason: Reason,
    fault: Fault = Fault.job,
    trouble: Trouble = Trouble.none,
) -> Outcome:
    """An `error`; after the container ended its report still starts with how it ended."""
    if result is None:
        return Outcome(OutcomeKind.error, text, reason, fault, trouble)
    tail = "".join(f"\n{extra}" for extra in (result.log_tail, result.gpu_line) if extra)
    details = f"{result.first_line()}\n{text}{tail}"
    return Outcome(OutcomeKind.error, details, reason, fault, trouble, ran=True)


def worker_failure(
    policy: WorkerFailurePolicy,
    text: str,
    result: RunResult | None = None,
    *,
    trouble: Trouble = Trouble.none,
) -> Outcome:
    """This worker, not the job, failed: a hand-back (or `error`, by ON_WORKER_FAILURE)."""
    if policy == "error":
        return failed(f"worker failure: {text}", result, Reason.worker, Fault.worker, trouble)
    return Outcome(
        OutcomeKind.handed_back,
        f"handed back by the worker: {text}",
        Reason.worker,
        Fault.worker,
        trouble,
        ran=result is not None,
    )


def unstarted(text: str) -> Outcome:
    """A staged job that never started: nobody's fault (it waited for a GPU that stayed busy,
    the worker stopped or restarted meanwhile), so handed back whatever ON_WORKER_FAILURE says
    (reporting `error` would end a job that never ran)."""
    return Outcome(
        OutcomeKind.handed_back, f"handed back by the worker: {text}", Reason.other, Fault.nobody
    )


def after_restart(policy: WorkerFailurePolicy, text: str, *, staged: bool = False) -> Outcome:
    """A job an earlier life of this fetcher left unreported, whose container never ran or is
    gone, given back at the next start. A `staged` job (its container created, waiting for its
    GPU) is `unstarted`, as when a stop hands it back; any other is this worker's failure (it
    died under the job)."""
    return unstarted(text) if staged else worker_failure(policy, text)


def of_failure(
    exc: Exception,
    job_id: str,
    cancel: Cancel,
    policy: WorkerFailurePolicy,
    result: RunResult | None = None,
) -> Outcome:
    """What an exception that ended a job's steps means for it. A bug of the fetcher is logged
    with its traceback (once) and is this worker's failure."""
    err = as_fetcher_error(exc)
    fault = err.fault if err is not None else Fault.worker
    if cancel.gone or fault == Fault.gone:
        return Outcome(OutcomeKind.gone, cancel.reason or str(exc), Reason.other, Fault.gone)
    if fault == Fault.nobody or cancel.unstarted:
        text = cancel.reason if cancel.unstarted and cancel.reason else str(exc)
        log.info("job %s: %s; handed back", job_id, text)
        return unstarted(text)
    if err is None:
        log.exception("job %s: unexpected failure", job_id)
        text = f"fetcher internal error: {type(exc).__name__}: {exc}"
    elif cancel.shutdown:
        text = cancel.reason or "the worker stopped"
    elif fault == Fault.job:
        log.error("job %s: %s", job_id, err.detail(job_id))
        return failed(err.detail(job_id), result, err.reason)
    else:
        text = err.detail(job_id)
    expected = isinstance(err, WorkerTrouble) and not err.lasting  # an engine restart
    (log.warning if expected else log.error)("job %s: %s", job_id, text)
    return worker_failure(policy, text, result, trouble=trouble_of(err, cancel))


def trouble_of(err: FetcherError | None, cancel: Cancel) -> Trouble:
    """Whether a worker failure is this box's lasting trouble (see `Trouble`)."""
    if cancel.shutdown:
        return Trouble.none
    if isinstance(err, WorkerTrouble):
        return Trouble.gpu if err.gpu_related else Trouble.box if err.lasting else Trouble.none
    return Trouble.box if err is None else Trouble.none
