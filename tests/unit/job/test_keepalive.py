"""The keep-alive: a status ping every interval and each change at once, in order; a 404
cancels the job as gone, no other failure does; after a failed PUT or a long silence it asks the
server before the next PUT, and stops a job that is no longer ours; stopping it never waits long."""

from __future__ import annotations

import threading
import time

import pytest

from fetcher.cancel import Cancel
from fetcher.errors import ApiUnavailable, AuthError, BadResponse, JobGone
from fetcher.job.keepalive import VERIFY_AFTER_SILENCE_S, KeepAlive
from fetcher.models import JobStatus
from tests.fakes import FakeClock, StatusServer, StatusSink
from tests.helpers import wait_for


def test_keepalive_pings_every_interval_and_sends_changes_at_once() -> None:
    sink = StatusSink()
    ka = KeepAlive(sink, "1", 0.2, Cancel()).start(JobStatus.preprocessing)
    time.sleep(0.5)
    ka.set_status(JobStatus.running)
    time.sleep(0.05)
    ka.stop()
    statuses = [s for _, s in sink.sent]
    assert statuses[:3] == ["preprocessing"] * 3 and statuses[-1] == "running"


def test_keepalive_sends_every_change_in_order_even_for_a_short_job() -> None:
    # Given a job that moves through its statuses faster than one PUT takes
    sink = StatusSink()
    slow = threading.Event()
    real = sink.put_status

    def put_status(job_id: str, status: JobStatus, *a: object, **kw: object) -> None:
        slow.wait(0.05)
        real(job_id, status)

    sink.put_status = put_status  # type: ignore[method-assign]
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.preprocessing)
    ka.set_status(JobStatus.running)
    ka.set_status(JobStatus.postprocessing)
    ka.stop()
    # Then each status reached the server once, in order, before stop() returned
    assert [s for _, s in sink.sent] == ["preprocessing", "running", "postprocessing"]
    assert ka.sent == [JobStatus.preprocessing, JobStatus.running, JobStatus.postprocessing]


def test_keepalive_sends_a_change_once_then_waits_the_interval() -> None:
    sink = StatusSink()
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.preprocessing)
    time.sleep(0.2)
    ka.set_status(JobStatus.running)
    time.sleep(0.3)
    sent = [s for _, s in sink.sent]
    ka.stop()
    assert sent == ["preprocessing", "running"], "no extra PUT right after a change"


def test_keepalive_404_cancels_the_job_as_gone() -> None:
    cancel = Cancel()
    ka = KeepAlive(StatusSink([None, JobGone("gone", 404)]), "1", 0.05, cancel).start(
        JobStatus.running
    )
    assert cancel.event.wait(2)
    assert cancel.gone and "gone" in (cancel.reason or "")
    ka.stop()


@pytest.mark.parametrize(
    "error",
    [
        ApiUnavailable("down"),
        AuthError("auth: HTTP 401: Not verified", 401),
        BadResponse("auth: unexpected Cognito answer (KeyError('IdToken'))"),
        RuntimeError("a bug in the sink"),
    ],
)
def test_keepalive_failures_other_than_404_never_cancel_the_job(error: Exception) -> None:
    sink = StatusSink([error, error, None, None])
    cancel = Cancel()
    ka = KeepAlive(sink, "1", 0.05, cancel).start(JobStatus.running)
    time.sleep(0.4)
    ka.stop()
    assert len(sink.sent) >= 4 and not cancel.is_set() and ka.pings >= 2


def test_keepalive_stop_is_immediate_with_a_long_interval() -> None:
    ka = KeepAlive(StatusSink(), "1", 3600, Cancel()).start(JobStatus.running)
    time.sleep(0.05)
    started = time.monotonic()
    ka.stop()
    assert time.monotonic() - started < 0.5


def test_keepalive_stop_does_not_wait_for_an_api_that_is_down() -> None:
    sink = StatusSink([ApiUnavailable("down")] * 100)
    ka = KeepAlive(sink, "1", 3600, Cancel()).start(JobStatus.running)
    ka.set_status(JobStatus.postprocessing)
    started = time.monotonic()
    ka.stop(flush_s=1.0)
    assert time.monotonic() - started < 1.5


def test_keepalive_after_a_failed_put_does_not_take_back_a_job_the_server_failed() -> None:
    # Given a job kept alive (an interval of an hour: the test says when the next try comes),
    # whose next PUT fails (the API out of reach)
    server = StatusServer()
    server.put_plan["1"] = ["ok", "down"]
    cancel = Cancel()
    ka = KeepAlive(server, "1", 3600, cancel).start(JobStatus.running)
    wait_for(lambda: server.received, 2, "a first PUT")
    ka.set_status(JobStatus.postprocessing)
    wait_for(lambda: len(server.puts) >= 2, 2, "a failed PUT")
    # When the server, hearing nothing, fails the job at its retry limit, then answers again
    with server._lock:
        server.status["1"] = JobStatus.error
        server.put_plan["1"] = ["ok"]
    ka.set_status(JobStatus.postprocessing)  # wakes the thread: the next try now
    # Then the keep-alive asks first, leaves the server's final `error` alone and stops the job
    wait_for(cancel.is_set, 2, "the job to be stopped")
    ka.stop()
    assert server.status["1"] == JobStatus.error and server.received == [("1", JobStatus.running)]
    assert cancel.gone and "error" in (cancel.reason or "")


def test_keepalive_stops_a_job_whose_id_the_server_no_longer_knows() -> None:
    # Given a job kept alive, whose id the server then forgets without the worker seeing the one
    # 404 (a deletion it learnt at its timeout check, a 404 lost in transit)
    server = StatusServer()
    cancel = Cancel()
    ka = KeepAlive(server, "1", 0.05, cancel).start(JobStatus.running)
    wait_for(lambda: server.received, 2, "a first PUT")
    server.unknown.add("1")
    # When every PUT now answers 500 (never 404), then the status check's 404 stops the job
    wait_for(cancel.is_set, 2, "the job to be stopped")
    ka.stop()
    assert cancel.gone and server.gets


def _silent_too_long(
    clock: FakeClock, server_says: JobStatus
) -> tuple[StatusServer, Cancel, KeepAlive]:
    """A job kept alive (on a clock that stands still) of which the server then hears nothing for
    longer than it waits before re-queueing, and meanwhile puts the job in `server_says`."""
    server = StatusServer()
    cancel = Cancel()
    ka = KeepAlive(server, "1", 60, cancel, clock=clock).start(JobStatus.running)
    wait_for(lambda: server.received, 2, "a first PUT")
    server.status["1"] = server_says
    clock.now += VERIFY_AFTER_SILENCE_S + 1
    return server, cancel, ka


def test_keepalive_after_a_long_silence_asks_before_it_puts_again(clock: FakeClock) -> None:
    # Given a job kept alive; when no PUT reached the server for longer than it waits before
    # re-queueing, and it failed the job meanwhile (its retry limit)
    server, cancel, ka = _silent_too_long(clock, JobStatus.error)
    ka.set_status(JobStatus.postprocessing)
    # Then the keep-alive asks first, leaves the server's final status alone and stops the job
    wait_for(cancel.is_set, 2, "the job to be stopped")
    ka.stop()
    assert server.gets and server.status["1"] == JobStatus.error and cancel.gone


def test_keepalive_takes_back_a_job_the_server_requeued_and_nobody_took(clock: FakeClock) -> None:
    # Given a 5-hour training whose pings did not get through for longer than the server waits:
    # it re-queued the job, and no other worker has taken it (that one would make it a 404)
    server, cancel, ka = _silent_too_long(clock, JobStatus.queued)
    assert ka.uncertain()
    ka.set_status(JobStatus.postprocessing)
    # Then the keep-alive asks, and takes it back: the GPU's hours are not thrown away
    wait_for(lambda: server.status["1"] == JobStatus.postprocessing, 2, "the job taken back")
    ka.stop()
    assert server.gets and not cancel.is_set()
    assert not ka.uncertain()  # its last PUT got through just now


def test_a_keepalive_whose_last_put_failed_is_uncertain() -> None:
    server = StatusServer()
    ka = KeepAlive(server, "1", 3600, Cancel()).start(JobStatus.running)
    wait_for(lambda: server.received, 2, "a first PUT")
    assert not ka.uncertain()
    server.put_plan["1"] = ["down"]
    ka.set_status(JobStatus.postprocessing)
    wait_for(ka.uncertain, 2, "the failed PUT to be noted")
    ka.stop()


def test_an_interval_longer_than_the_silence_limit_asks_nothing_while_pings_get_through(
    clock: FakeClock,
) -> None:
    # TIMEOUT_STATUS set above half the server's failure timeout: its own pings are not silence
    server = StatusServer()
    ka = KeepAlive(server, "1", 200, Cancel(), clock=clock).start(JobStatus.running)
    wait_for(lambda: server.received, 2, "a first PUT")
    clock.now += 200
    ka.set_status(JobStatus.postprocessing)
    wait_for(lambda: server.status["1"] == JobStatus.postprocessing, 2, "the change")
    ka.stop()
    assert server.gets == []


def test_keepalive_asks_nothing_while_its_pings_get_through(clock: FakeClock) -> None:
    server = StatusServer()
    ka = KeepAlive(server, "1", 0.02, Cancel(), clock=clock).start(JobStatus.running)
    wait_for(lambda: len(server.received) >= 3, 2, "three PUTs")
    clock.now += VERIFY_AFTER_SILENCE_S - 1
    ka.set_status(JobStatus.postprocessing)
    wait_for(lambda: server.status["1"] == JobStatus.postprocessing, 2, "the change")
    ka.stop()
    assert server.gets == []


def test_keepalive_after_a_failed_put_goes_on_for_a_job_still_ours() -> None:
    server = StatusServer()
    server.put_plan["1"] = ["down", "ok"]
    cancel = Cancel()
    ka = KeepAlive(server, "1", 0.05, cancel).start(JobStatus.running)
    wait_for(lambda: len(server.received) >= 2, 2, "PUTs again")
    ka.stop()
    assert server.gets and not cancel.is_set()
