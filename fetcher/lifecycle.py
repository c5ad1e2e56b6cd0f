"""The words for where a job is: its durable `Phase` (what crash recovery reads), its `Stage`
(what it is doing now: noted in the job store, shown by `fetcher status`, timed in the metrics),
and how it ended (`OutcomeKind`: the metrics' outcome, the report's status).

    claimed ──► started (its container exists) ──► reporting (a status waits for delivery) ──► gone
    stages: claimed → preparing → downloading → pulling → (staged) → starting → running → uploading
            → reporting
"""

from __future__ import annotations

from enum import StrEnum

from fetcher.models import JobStatus


class Phase(StrEnum):
    """A job's durable step in the job store; each is written before the step is taken."""

    claimed = "claimed"  # claimed; no container yet
    started = "started"  # its container exists (recovery adopts it)
    reporting = "reporting"  # a final status or a hand-back waits for the deliverer


class Stage(StrEnum):
    """What a job is doing now. The four stages that take time are timed in
    `fetcher_stage_seconds{stage}` under their short label (`Stage.downloading.timed_as` is
    `download`): those label values are part of the metrics' interface."""

    claimed = "claimed"
    preparing = "preparing"
    downloading = "downloading"
    pulling = "pulling"
    staged = "staged"  # STAGE_AHEAD: inputs and image ready, waiting for its GPU
    starting = "starting"
    running = "running"
    uploading = "uploading"
    reporting = "reporting"

    @property
    def timed_as(self) -> str | None:
        """The metrics label of a timed stage; None for a stage that is not timed."""
        return _TIMED.get(self)


_TIMED = {
    Stage.downloading: "download",
    Stage.pulling: "pull",
    Stage.running: "run",
    Stage.uploading: "upload",
}
#: the `stage` label values of `fetcher_stage_seconds`
TIMED_STAGES = tuple(_TIMED.values())


class OutcomeKind(StrEnum):
    """`fetcher_jobs_total{outcome}`: finished: reported `finished`; error: reported `error`;
    handed_back: given back `queued` (it did not fit, this worker failed or stopped under it);
    gone: the server no longer has it (deleted by its user, or re-queued and taken elsewhere)."""

    finished = "finished"
    error = "error"
    handed_back = "handed_back"
    gone = "gone"

    @property
    def status(self) -> JobStatus | None:
        """The status that reports it: `queued` for a hand-back; None for a job that is gone."""
        return _STATUS.get(self)


_STATUS = {
    OutcomeKind.finished: JobStatus.finished,
    OutcomeKind.error: JobStatus.error,
    OutcomeKind.handed_back: JobStatus.queued,
}
