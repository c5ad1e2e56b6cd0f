"""Prometheus metrics of one fetcher: what it did (counters), how long the stages took
(histograms), what it holds now (gauges), served on `/metrics`.

The daemon makes ONE `Metrics` object at start-up, whether or not metrics are served, and calls
its event methods; `serve(settings.metrics_port, settings.metrics_host)` only when
`METRICS_PORT` is set. Every method is cheap, thread-safe and never raises, so the job
pipeline, the keep-alive threads and the worker loop can call them freely.

Names follow the Prometheus conventions that GitLab Runner (`gitlab_runner_jobs_total`,
`gitlab_runner_failed_jobs_total{failure_reason}`, `gitlab_runner_job_duration_seconds`,
`gitlab_runner_api_request_statuses_total{endpoint,status}`, `gitlab_runner_version_info`) and
the Buildkite agent follow: one `fetcher_` prefix, base units in the name (`_seconds`,
`_bytes`), `_total` on counters, `_info` for the build/settings pseudo-metric.

Every label value comes from a small fixed set (the tuples below); anything else is counted as
`other` (logged once), so a bug in a caller can never create unbounded series. Job ids, URLs
and image names are never label values.

| metric | type | labels |
| --- | --- | --- |
| `fetcher_jobs_claimed_total` | counter | |
| `fetcher_jobs_total` | counter | `outcome`: OUTCOMES |
| `fetcher_job_failures_total` | counter | `reason`: FAILURE_REASONS |
| `fetcher_stage_seconds` | histogram | `stage`: STAGES |
| `fetcher_transfer_bytes_total` | counter | `direction`: `down`, `up` |
| `fetcher_api_calls_total` | counter | `call`: API_CALLS, `outcome`: API_OUTCOMES |
| `fetcher_api_retries_total` | counter | `call` |
| `fetcher_jobs_running`, `fetcher_job_slots` | gauge | |
| `fetcher_gpus_in_use`, `fetcher_gpus` | gauge | |
| `fetcher_outbox_pending` | gauge | |
| `fetcher_last_claim_timestamp_seconds` | gauge | |
| `fetcher_seconds_since_last_claim` | gauge | (computed at scrape time) |
| `fetcher_images_pruned_total`, `fetcher_image_pruned_bytes_total` | counter | |
| `fetcher_gpu_healthy`, `fetcher_gpu_utilization_ratio`, `fetcher_gpu_memory_used_bytes`, `fetcher_gpu_power_watts` | gauge | `gpu`: each GPU's UUID (a fixed set) |
| `fetcher_job_gpu_peak_memory_bytes`, `fetcher_job_gpu_utilization_ratio` | histogram | |
| `fetcher_jobs_gpu_unused_total` | counter | |
| `fetcher_claims_paused` | gauge | `reason`: PAUSE_REASONS |
| `fetcher_heartbeat_timestamp_seconds` | gauge | |
| `fetcher_info` | info | `version` and INFO_SETTINGS |

plus the client library's `process_*` and `python_*` metrics (memory, CPU, open fds, GC).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from fetcher.errors import Reason, api_label
from fetcher.gpu.board import GpuView
from fetcher.lifecycle import TIMED_STAGES, OutcomeKind
from fetcher.logs import redact, safe_url

log = logging.getLogger(__name__)

OTHER = "other"

#: How a claimed job ended (`fetcher_jobs_total{outcome}`): see `fetcher.lifecycle.OutcomeKind`.
OUTCOMES = tuple(k.value for k in OutcomeKind)

#: Why a job ended in `error` (`fetcher_job_failures_total{reason}`): see `fetcher.errors.Reason`.
FAILURE_REASONS = tuple(r.value for r in Reason)

#: The timed stages of a job (`fetcher_stage_seconds{stage}`): see `fetcher.lifecycle.Stage`.
STAGES = TIMED_STAGES

#: Why no job is claimed (`fetcher_claims_paused{reason}`).
PAUSE_REASONS = ("disk", "unhealthy", "admin")

#: The label of `fetcher_info` whose setting is spelled otherwise (the label keeps its old name).
INFO_SETTING_FIELDS = {"groups": "job_groups"}

DIRECTIONS = ("down", "up")

#: The API calls, by a short fixed name (`fetcher_api_calls_total{call}`).
API_CALLS = ("login", "access_info", "claim", "status", "download", "upload")

#: How one API call ended (after its retries): see `fetcher.errors.api_label`.
API_OUTCOMES = ("ok", "unavailable", "auth", "gone", "rejected", "bad_response", "error")

#: Settings that `fetcher_info` may show, the only ones `set_info` accepts: none of them is a
#: secret (tokens, passwords and the username are never here).
INFO_SETTINGS = (
    "api_url",
    "fetcher_id",
    "max_parallel_jobs",
    "gpus",
    "groups",
    "image_pull_policy",
    "enforce_job_limits",
    "shm_size",
    "ipc_host",
    "poll_interval_s",
    "keepalive_interval_s",
    "log_format",
    "image_keep_days",
    "image_cache_max_gb",
)

#: 0.05 s to 2 days: short downloads and pulls up to week-end training runs.
STAGE_BUCKETS_S = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
)


def settings_for_info(settings: object) -> dict[str, str]:
    """The INFO_SETTINGS of a Settings object, as strings (None = ""), ready for `set_info`."""
    out: dict[str, str] = {}
    for name in INFO_SETTINGS:
        value = getattr(settings, INFO_SETTING_FIELDS.get(name, name), None)
        out[name] = "" if value is None else str(value)
    return out


class Metrics:
    """The fetcher's metrics, in a registry of their own (several in one process do not collide).

    `clock` (default `time.time`) is the wall clock of the claim timestamps; tests pass a fake.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # `_created` series double every counter for no use here (Prometheus ignores them).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._clock = clock
        self._started = clock()
        self._last_claim: float | None = None
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._server: WSGIServer | None = None
        self.port: int | None = None  # where /metrics is served, once it is
        self._thread: threading.Thread | None = None

        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self._job_metrics(r)
        self._state_metrics(r)
        self._gpu_metrics(r)
        self._info = Info("fetcher", "Version and settings of this fetcher", registry=r)

        # Known series start at 0, so that rate() and increase() see the first event.
        for outcome in OUTCOMES:
            self._jobs.labels(outcome)
        for reason in FAILURE_REASONS:
            self._failures.labels(reason)
        for stage in STAGES:
            self._stage.labels(stage)
        for direction in DIRECTIONS:
            self._bytes.labels(direction)

    def _job_metrics(self, r: CollectorRegistry) -> None:
        self._claimed = Counter(
            "fetcher_jobs_claimed",
            "Jobs received from the API (claims that returned a job)",
            registry=r,
        )
        self._jobs = Counter(
            "fetcher_jobs", "Claimed jobs that ended, by outcome", ["outcome"], registry=r
        )
        self._failures = Counter(
            "fetcher_job_failures",
            "Jobs that ended in error, by reason class",
            ["reason"],
            registry=r,
        )
        self._stage = Histogram(
            "fetcher_stage_seconds",
            "Duration of the stages of a job",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self._bytes = Counter(
            "fetcher_transfer_bytes",
            "Bytes of job files transferred, down (inputs) and up (outputs)",
            ["direction"],
            registry=r,
        )
        self._api = Counter(
            "fetcher_api_calls",
            "Calls of the worker-facing API, by call and outcome (after retries)",
            ["call", "outcome"],
            registry=r,
        )
        self._retries = Counter(
            "fetcher_api_retries", "Retried tries of API calls", ["call"], registry=r
        )

    def _state_metrics(self, r: CollectorRegistry) -> None:
        self._running = Gauge("fetcher_jobs_running", "Jobs running now (busy slots)", registry=r)
        self._slots = Gauge("fetcher_job_slots", "Jobs this fetcher runs at once", registry=r)
        self._gpus_used = Gauge("fetcher_gpus_in_use", "GPUs given to running jobs", registry=r)
        self._gpus = Gauge("fetcher_gpus", "GPUs this fetcher uses", registry=r)
        self._outbox = Gauge(
            "fetcher_outbox_pending",
            "Final statuses kept on disk, waiting to be delivered to the API",
            registry=r,
        )
        self._last_claim_ts = Gauge(
            "fetcher_last_claim_timestamp_seconds",
            "Unix time of the last claim the API answered (with or without a job); 0: none yet",
            registry=r,
        )
        since = Gauge(
            "fetcher_seconds_since_last_claim",
            "Seconds since the last claim the API answered, or since start-up if none yet",
            registry=r,
        )
        since.set_function(self._seconds_since_claim)
        self._pruned = Counter(
            "fetcher_images_pruned", "Job images removed by the pruning policy", registry=r
        )
        self._pruned_bytes = Counter(
            "fetcher_image_pruned_bytes",
            "Size of the job images removed by the pruning policy",
            registry=r,
        )

    def _gpu_metrics(self, r: CollectorRegistry) -> None:
        self._gpu_labels: tuple[str, ...] = ()
        self._gpu_healthy = Gauge(
            "fetcher_gpu_healthy",
            "1 while a GPU may be given to jobs; 0 while it is quarantined (see fetcher status)",
            ["gpu"],
            registry=r,
        )
        self._gpu_util = Gauge(
            "fetcher_gpu_utilization_ratio",
            "A GPU's utilisation at the last look",
            ["gpu"],
            registry=r,
        )
        self._gpu_mem = Gauge(
            "fetcher_gpu_memory_used_bytes",
            "A GPU's memory in use at the last look",
            ["gpu"],
            registry=r,
        )
        self._gpu_power = Gauge(
            "fetcher_gpu_power_watts", "A GPU's power draw at the last look", ["gpu"], registry=r
        )
        self._job_gpu_metrics(r)
        self._heartbeat = Gauge(
            "fetcher_heartbeat_timestamp_seconds",
            "Unix time of the worker loop's last pass (a stuck loop stops it)",
            registry=r,
        )
        self._claims_paused = Gauge(
            "fetcher_claims_paused",
            "1 while no job is claimed, by why: disk (PATH_BASE nearly full), unhealthy (the box or"
            " every GPU quarantined), admin (fetcher pause)",
            ["reason"],
            registry=r,
        )
        for reason in PAUSE_REASONS:
            self._claims_paused.labels(reason)

    def _job_gpu_metrics(self, r: CollectorRegistry) -> None:
        self._job_gpu_peak = Histogram(
            "fetcher_job_gpu_peak_memory_bytes",
            "Peak GPU memory a job used",
            buckets=tuple(
                2**30 * g for g in (0.25, 0.5, 1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 141)
            ),
            registry=r,
        )
        self._job_gpu_util = Histogram(
            "fetcher_job_gpu_utilization_ratio",
            "Mean GPU utilisation of a job while it ran",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
            registry=r,
        )
        self._job_gpu_unused = Counter(
            "fetcher_jobs_gpu_unused", "Jobs that never touched the GPU they were given", registry=r
        )

    # --- the HTTP endpoint -----------------------------------------------------------------
    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve `/metrics` on `host:port` in a daemon thread; port 0 picks a free one. Returns
        the bound port. Raises OSError when the address cannot be bound, RuntimeError when
        already serving."""
        if self._server is not None:
            raise RuntimeError("metrics: already serving")
        server, thread = start_http_server(port, host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = self.port = int(server.server_address[1])
        log.info("metrics: serving /metrics on %s:%d", host, bound)
        return bound

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        log.info("metrics: stopped serving")

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ------------------------------------------------------------------------------
    def job_claimed(self) -> None:
        """A claim returned a job."""
        self._claimed.inc()

    def job_ended(self, outcome: str, reason: str = "") -> None:
        """A claimed job ended: `outcome` from OUTCOMES; for `error`, `reason` from
        FAILURE_REASONS (empty = other)."""
        outcome = self._known("outcome", outcome, OUTCOMES)
        self._jobs.labels(outcome).inc()
        if outcome == "error":
            self._failures.labels(self._known("reason", reason or OTHER, FAILURE_REASONS)).inc()

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Time the block as `stage` (STAGES), also when it raises."""
        child = self._stage.labels(self._known("stage", stage, STAGES))
        start = time.monotonic()
        try:
            yield
        finally:
            child.observe(time.monotonic() - start)

    def transferred(self, direction: str, nbytes: int) -> None:
        """`nbytes` of job files went `down` (inputs) or `up` (outputs)."""
        if nbytes > 0:
            self._bytes.labels(self._known("direction", direction, DIRECTIONS)).inc(nbytes)

    # --- the API ---------------------------------------------------------------------------
    def api_call(self, call: str, outcome: str = "ok") -> None:
        """One API call (API_CALLS) ended, after its retries, with `outcome` (API_OUTCOMES)."""
        self._api.labels(
            self._known("call", call, API_CALLS), self._known("api outcome", outcome, API_OUTCOMES)
        ).inc()

    @contextmanager
    def track_api(self, call: str) -> Iterator[None]:
        """Count the block as one API call: its outcome from the exception it raises (re-raised)."""
        try:
            yield
        except BaseException as exc:
            self.api_call(call, api_label(exc))
            raise
        self.api_call(call, "ok")

    def api_retry(self, call: str) -> None:
        """A try of an API call failed transiently and will be retried."""
        self._retries.labels(self._known("call", call, API_CALLS)).inc()

    def claim_succeeded(self) -> None:
        """The API answered a claim (with or without a job): the fetcher is alive and connected.
        Feeds `fetcher_last_claim_timestamp_seconds` and `fetcher_seconds_since_last_claim`."""
        now = self._clock()
        with self._lock:
            self._last_claim = now
        self._last_claim_ts.set(now)

    def _seconds_since_claim(self) -> float:
        with self._lock:
            since = self._last_claim if self._last_claim is not None else self._started
        return max(0.0, self._clock() - since)

    # --- what the fetcher holds now --------------------------------------------------------
    def set_slots(self, busy: int, total: int) -> None:
        self._running.set(busy)
        self._slots.set(total)

    def set_gpus(self, in_use: int, total: int) -> None:
        self._gpus_used.set(in_use)
        self._gpus.set(total)

    def heartbeat(self) -> None:
        """A pass of the worker loop."""
        self._heartbeat.set(self._clock())

    def set_claims_paused(self, reason: str | None) -> None:
        """No claim is made now because of `reason` (PAUSE_REASONS), or claims go on (None)."""
        known = None if reason is None else self._known("pause reason", reason, PAUSE_REASONS)
        for r in PAUSE_REASONS:
            self._claims_paused.labels(r).set(1 if r == known else 0)

    def set_gpu_states(self, views: Sequence[GpuView]) -> None:
        """Each GPU's health and use at the last look; its label is its UUID (a fixed set)."""
        if not self._gpu_labels:
            self._gpu_labels = tuple(v.uuid for v in views)
        for v in views:
            gpu = self._known("gpu", v.uuid, self._gpu_labels)
            self._gpu_healthy.labels(gpu).set(1 if v.healthy else 0)
            if v.utilization is not None:
                self._gpu_util.labels(gpu).set(v.utilization / 100)
            if v.memory_used_mb is not None:
                self._gpu_mem.labels(gpu).set(v.memory_used_mb * 2**20)
            if v.power_w is not None:
                self._gpu_power.labels(gpu).set(v.power_w)

    def job_gpu(self, peak_bytes: int, mean_util: float | None, unused: bool) -> None:
        """A job's GPU figures, once its container has ended."""
        self._job_gpu_peak.observe(peak_bytes)
        if mean_util is not None:
            self._job_gpu_util.observe(mean_util)
        if unused:
            self._job_gpu_unused.inc()

    def set_outbox(self, pending: int) -> None:
        """Final statuses waiting for delivery."""
        self._outbox.set(pending)

    def images_pruned(self, count: int, nbytes: int) -> None:
        """The pruning policy removed `count` images of `nbytes` in all."""
        if count > 0:
            self._pruned.inc(count)
        if nbytes > 0:
            self._pruned_bytes.inc(nbytes)

    def set_info(self, version: str, settings: Mapping[str, Any]) -> None:
        """`fetcher_info{version=..., <setting>=...} 1`. Only INFO_SETTINGS are taken from
        `settings` (others are dropped: nothing unlisted, so no secret, can get in); values are
        redacted like log lines, and URLs lose user info and query."""
        labels = {"version": redact(version)}
        for name in INFO_SETTINGS:
            if name in settings:
                value = settings[name]
                text = "" if value is None else str(value)
                if name == "api_url":
                    text = safe_url(text)
                labels[name] = redact(text)
        self._info.info(labels)

    # --- helpers ---------------------------------------------------------------------------
    def _known(self, what: str, value: str, allowed: tuple[str, ...]) -> str:
        if value in allowed:
            return value
        key = (what, value)
        with self._lock:
            first = key not in self._warned and len(self._warned) < 100  # bounded memory
            if first:
                self._warned.add(key)
        if first:
            log.warning("metrics: unknown %s %r counted as %r", what, value[:40], OTHER)
        return OTHER
