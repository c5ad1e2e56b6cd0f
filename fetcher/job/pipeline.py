"""process_job: one claimed job, start to end, as a list of steps.

    workspace → download inputs → image → start container → wait (keep-alive meanwhile)
      → upload outputs → report (to the deliverer) → clean up

Every step runs under the job's Cancel; a failure of any step becomes an Outcome
(`fetcher.outcome` decides between `error`, a hand-back and "gone"), the outcome is handed to the
deliverer (which sends it exactly once), and only then is everything cleaned up. A job adopted
after a restart (`resume`: its container's id) starts at its container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator

from fetcher import outcome as outcomes
from fetcher.cancel import Cancel
from fetcher.engine.container import JobContainer, Limits, RunResult
from fetcher.engine.pull import image_env
from fetcher.errors import Interrupted, NotStarted, WorkerTrouble
from fetcher.job.cleanup import clean_up
from fetcher.job.deps import JobDeps
from fetcher.job.keepalive import KeepAlive
from fetcher.job.transfer import download_inputs, upload_outputs
from fetcher.job.workspace import Layout, Workspace, plan_layout
from fetcher.lifecycle import OutcomeKind, Stage
from fetcher.models import JobSpecs, JobStatus
from fetcher.outcome import Outcome
from fetcher.pool import Allocation
from fetcher.store import StoreError

log = logging.getLogger(__name__)


class JobRun:
    """One job's moving parts: its directory, container, keep-alive and what it has produced."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpecs,
        deps: JobDeps,
        cancel: Cancel,
        gpu_uuids: list[str],
        limits: Limits,
        *,
        adopted: bool = False,
    ) -> None:
        s = deps.settings
        self.job_id = job_id
        self.spec = spec
        self.deps = deps
        self.cancel = cancel
        self.gpu_uuids = gpu_uuids
        self.limits = limits
        self.ws = Workspace(job_id, s.path_base, s.host_base)
        self.container = JobContainer(
            deps.docker, job_id, deps.fetcher_id, deps.container_options, engine=deps.engine
        )
        self.keepalive = KeepAlive(
            deps.api, job_id, s.keepalive_interval_s, cancel, verify_first=adopted
        )
        self.adopted = adopted
        self.log_file = s.state_dir.log_of(job_id)
        self.layout: Layout | None = None
        self.result: RunResult | None = None
        self.turn: Allocation | None = None  # staged ahead: the share it waits for
        self.on_exit: Callable[[], None] = lambda: None
        self.on_give_up: Callable[[], None] = lambda: None  # staged: it will not start

    @contextlib.contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        """Enter `stage`: noted in the job store (`fetcher status` shows it) and, for the stages
        that take time, timed in the metrics (fetcher_stage_seconds)."""
        try:
            self.deps.store.stage(self.job_id, stage)
        except StoreError as exc:
            log.warning("job %s: could not note stage %s: %s", self.job_id, stage.value, exc)
        label = stage.timed_as
        if label is None:
            yield
            return
        with self.deps.metrics.stage(label):
            yield

    def started(self, container_id: str) -> None:
        """Written before the container starts: recovery finds the job's container by it."""
        try:
            self.deps.store.started(self.job_id, container_id)
        except StoreError as exc:
            log.warning("job %s: could not note its container: %s", self.job_id, exc)

    def track_gpus(self) -> None:
        """Sample the job's GPUs while its container runs (fetcher.gpu.watch)."""
        board = self.deps.gpus
        if board is not None and self.gpu_uuids:
            board.usage.start(self.job_id, [g for g in board.gpus if g.uuid in self.gpu_uuids])

    def gpu_figures(self) -> str | None:
        """What the job did with its GPUs, once its container ended: logged, counted in the
        metrics, and the line for its report and its container.log."""
        board = self.deps.gpus
        use = None if board is None else board.usage.finish(self.job_id)
        if use is None:
            return None
        line = use.summary()
        (log.warning if use.never_used else log.info)("job %s: %s", self.job_id, line)
        if use.sampled:
            self.deps.metrics.job_gpu(use.peak_mb * 2**20, use.mean_util_ratio, use.never_used)
        with contextlib.suppress(OSError), self.log_file.open("a") as out:
            out.write(f"\n[fetcher] {line}\n")
        return line

    def counted(self, direction: str) -> Callable[[int], None]:
        return lambda nbytes: self.deps.metrics.transferred(direction, nbytes)

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Interrupted(self.cancel.reason or "cancelled")


def process_job(
    job_id: str,
    spec: JobSpecs,
    deps: JobDeps,
    *,
    cancel: Cancel | None = None,
    gpu_uuids: list[str] | None = None,
    limits: Limits | None = None,
    resume: str | None = None,
    turn: Allocation | None = None,
    on_exit: Callable[[], None] | None = None,
    on_give_up: Callable[[], None] | None = None,
) -> Outcome:
    """Run one claimed job to its end and report it. Never raises: every failure is an Outcome.
    `resume`: the id of the job's container, started by an earlier life of this fetcher; `turn`:
    a job staged ahead waits for this share before its container starts; `on_exit` is called the
    moment its container has ended (its GPU is free then, while the outputs upload);
    `on_give_up` the moment a staged job fails or gives up before its share came (before its
    report and cleanup, which take a while: the share must not be given to it meanwhile)."""
    run = JobRun(
        job_id,
        spec,
        deps,
        cancel or Cancel(),
        gpu_uuids or [],
        limits or Limits(),
        adopted=resume is not None,
    )
    run.turn, run.on_exit = turn, on_exit or (lambda: None)
    run.on_give_up = on_give_up or (lambda: None)
    log.info("job %s: %s (%s)", job_id, "adopted" if resume else "started", spec.handler.image_url)
    run.keepalive.start(JobStatus.running if resume else JobStatus.preprocessing)
    try:
        try:
            outcome = run_steps(run, resume)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            give_up_place(run)
            policy = deps.settings.on_worker_failure
            outcome = outcomes.of_failure(exc, job_id, run.cancel, policy, run.result)
    finally:
        run.keepalive.stop()  # whatever happened: no ping may outlive the job, none land after it
        if deps.gpus is not None:
            deps.gpus.usage.finish(job_id)
    # an adopted job's status on the server is asked before its report is sent (it may have been
    # re-queued while the fetcher was away, and the keep-alive may never have reached the server)
    # so is a job whose keep-alive lost touch with the server near its end (it may have been
    # re-queued, or failed at the server's retry limit, meanwhile)
    report(deps, job_id, outcome, verify=run.adopted or run.keepalive.uncertain())
    keep = deps.settings.keep_failed_job_dirs and outcome.kind == OutcomeKind.error
    if not clean_up(deps, run.container, image=spec.handler.image_url, keep_dir=keep):
        return dataclasses.replace(outcome, container_left=run.container.left_behind)
    return outcome


def give_up_place(run: JobRun) -> None:
    """A staged job that failed or gave up before it got its share (its bound passed, its GPU
    was quarantined, it was cancelled, a step failed) leaves its place behind the running job
    now: its report and cleanup take a while, and the share freed meanwhile must go to the next
    job, not to one that will not start. Its container never ran (it runs only once the share is
    the job's), so nothing it holds is freed too early."""
    if run.turn is not None and not run.turn.ready.is_set():
        run.on_give_up()


def run_steps(run: JobRun, resume: str | None) -> Outcome:
    run.layout = plan_layout(run.job_id, run.spec)
    if resume is None:
        prepare(run)
        download(run)
        pull(run)
        start(run)
    else:
        run.container.attach(resume)
    wait(run)
    upload(run)
    assert run.result is not None
    return outcomes.of_run(run.result)


def prepare(run: JobRun) -> None:
    assert run.layout is not None
    with run.stage(Stage.preparing):
        run.ws.create(run.layout)


def download(run: JobRun) -> None:
    assert run.layout is not None
    with run.stage(Stage.downloading):
        download_inputs(
            run.deps.api.files,
            run.job_id,
            run.layout,
            run.ws,
            cancel=run.cancel.event,
            workers=run.deps.settings.download_workers,
            counted=run.counted("down"),
        )
    run.check_cancel()


def pull(run: JobRun) -> None:
    with run.stage(Stage.pulling):
        run.container.pull(run.spec.handler.image_url, run.cancel)
    if run.deps.images is not None:
        run.deps.images.used(run.spec.handler.image_url)
    check_cuda(run)


def check_cuda(run: JobRun) -> None:
    """The image's CUDA requirements against this box's driver, before the container starts: an
    image the driver cannot run is handed back with the reason (this box's trouble, not the job's).
    Raises WorkerTrouble."""
    board = run.deps.gpus
    if board is None or not run.gpu_uuids:
        return
    env = image_env(run.deps.docker, run.spec.handler.image_url)
    why = board.cuda_unmet(env, dict(run.spec.app.env or {}), run.gpu_uuids)
    if why is not None:
        raise WorkerTrouble(why)


def wait_for_turn(run: JobRun) -> None:
    """A job staged ahead (STAGE_AHEAD), its inputs and image ready, waits for the share of the
    job it was claimed behind. It is handed back unstarted (NotStarted) when that share is not
    free within STAGE_AHEAD_MAX_WAIT_S of its claim (it never waits behind an hours-long training
    while another worker is idle: the server sees it `preprocessing` from its claim on, so its
    download, image and container count in the bound, and only what is left of it is waited),
    when its GPU is quarantined meanwhile, or when the worker stops."""
    turn = run.turn
    if turn is None or turn.ready.is_set():
        return
    limit = run.deps.settings.stage_ahead_max_wait_s
    woken = threading.Event()
    run.cancel.subscribe(woken)
    turn.listen(woken)
    with run.stage(Stage.staged):
        left = max(0.0, limit - (time.monotonic() - turn.made_at))
        log.info(
            "job %s: staged; waiting up to %.0f s for job %s to free its share",
            run.job_id,
            left,
            turn.behind,
        )
        woken.wait(left)
    run.check_cancel()
    if turn.refused is not None:
        raise NotStarted(f"staged ahead; the GPU it waited for was {turn.refused}")
    if not turn.ready.is_set():
        raise NotStarted(
            f"staged ahead and not started within {limit:.0f} s of its claim"
            f" (STAGE_AHEAD_MAX_WAIT_S): job {turn.behind} still holds the GPU it waits for"
        )


def start(run: JobRun) -> None:
    """Create the container and start it; a job staged ahead creates it first, then waits for
    its GPU, so that only the start is left in the GPU's time."""
    with run.stage(Stage.starting):
        run.container.create(
            run.spec, run.ws, run.gpu_uuids, run.limits, cancel=run.cancel, created=run.started
        )
    wait_for_turn(run)
    run.container.run()  # in the GPU's time: nothing else (the stage is noted once it runs)


def wait(run: JobRun) -> None:
    with run.stage(Stage.running):
        run.keepalive.set_status(JobStatus.running)
        run.track_gpus()
        run.container.follow_logs(run.log_file)
        run.result = run.container.wait(run.cancel, run.deps.settings.job_time_limit_s)
        run.result.gpu_line = run.gpu_figures()
        try:  # before the GPU is freed: a GPU in trouble is quarantined
            trouble = gpu_trouble(run)
        except Exception:  # a bug here must not keep the GPU from the next job
            log.exception("job %s: checking its GPUs after its run failed", run.job_id)
            trouble = None
    if run.result.exited:
        run.on_exit()
    run.check_cancel()
    if trouble is not None:
        raise WorkerTrouble(
            f"{trouble}; the job's container ended ({run.result.first_line()}) on a GPU in trouble",
            gpu_related=True,
        )


def gpu_trouble(run: JobRun) -> str | None:
    """A job whose container failed while one of its GPUs got into trouble (an Xid, a GPU that
    fell off the bus: CUDA in the container then dies with a non-zero exit code) failed for the
    box's trouble, not its own: what trouble, or None. A job that finished is left as it is."""
    board, result = run.deps.gpus, run.result
    if board is None or not run.gpu_uuids or result is None:
        return None
    if result.exit_code == 0 and not result.ended_by:
        return None
    return board.trouble(run.gpu_uuids)


def upload(run: JobRun) -> None:
    assert run.layout is not None
    s = run.deps.settings
    run.keepalive.set_status(JobStatus.postprocessing)
    with run.stage(Stage.uploading):
        upload_outputs(
            run.deps.api.files,
            run.job_id,
            run.layout,
            run.ws,
            container_log=run.log_file,
            cancel=run.cancel.event,
            workers=s.download_workers,
            counted=run.counted("up"),
            max_files=s.job_output_max_files,
            max_bytes=int(s.job_output_max_mb * 2**20) or None,
        )


def report(deps: JobDeps, job_id: str, outcome: Outcome, *, verify: bool = False) -> None:
    """Hand the outcome to the deliverer (kept on disk until it is delivered, exactly once)."""
    deps.metrics.job_ended(outcome.kind, outcome.reason)
    status = outcome.status
    if status is None:
        log.info("job %s: dropped: %s", job_id, outcome.first_line)
        try:
            deps.store.forget(job_id)
        except StoreError as exc:
            log.warning("job %s: could not forget it in the store: %s", job_id, exc)
        return
    log.info("job %s: %s (%s)", job_id, outcome.kind.replace("_", " "), outcome.first_line)
    deps.deliverer.submit(job_id, status, outcome.details, verify=verify)
