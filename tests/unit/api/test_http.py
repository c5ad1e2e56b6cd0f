"""The one HTTP helper: transient failures retried within the budget (and not a moment longer
once interrupted), every other answer mapped to its error class, Retry-After read defensively, an
answer read within bounds (its size, its nesting, a deadline for one that trickles in), and no
call redirected to this box or a link-local address."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
import responses

from fetcher.api.auth import CognitoLogin, FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http, Transient
from fetcher.errors import ApiRejected, ApiUnavailable, AuthError, BadResponse, Interrupted
from fetcher.models import ClaimOffer, JobStatus
from tests.helpers import API, FIXED_TOKEN, serving, trickle, worker_api


# --- retries and error classes -----------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses_are_retried_then_succeed(
    rsps: responses.RequestsMock, status: int
) -> None:
    rsps.put(f"{API}/jobs/1/status", status=status)
    rsps.put(f"{API}/jobs/1/status", status=status)
    rsps.put(f"{API}/jobs/1/status", status=204)
    worker_api().put_status("1", JobStatus.running)
    assert len(rsps.calls) == 3


def test_connection_errors_are_retried(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/1/status", body=requests.ConnectionError("reset by peer"))
    rsps.get(f"{API}/jobs/1/status", body=requests.Timeout("slow"))
    rsps.get(f"{API}/jobs/1/status", json="queued")
    assert worker_api().get_status("1") == JobStatus.queued


def test_retries_give_up_with_api_unavailable_within_the_budget(
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(f"{API}/jobs/1/status", status=503)
    import time

    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match="HTTP 503"):
        worker_api(retry_s=0.5).get_status("1")
    assert time.monotonic() - started < 2.0
    assert len(rsps.calls) > 2


def test_a_single_try_is_made_with_retry_s_zero(rsps: responses.RequestsMock) -> None:
    rsps.put(f"{API}/jobs/3/status", status=500, body="Internal Server Error")
    with pytest.raises(ApiUnavailable):
        worker_api(retry_s=30).put_status("3", JobStatus.finished, retry_s=0)
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("status", [400, 422])
def test_other_4xx_are_not_retried(rsps: responses.RequestsMock, status: int) -> None:
    rsps.put(f"{API}/jobs/1/status", status=status, json={"detail": "bad status"})
    with pytest.raises(ApiRejected, match="bad status"):
        worker_api().put_status("1", JobStatus.running)
    assert len(rsps.calls) == 1


def test_fixed_token_401_is_an_auth_error_without_retry(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", status=401, json={"detail": "Not verified"})
    with pytest.raises(AuthError, match="Not verified"):
        worker_api().claim_jobs(ClaimOffer(memory=1, cpu_cores=1))
    assert len(rsps.calls) == 1


def test_403_outside_workers_group_is_an_auth_error(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", status=403, json={"detail": "Not a member of the 'workers' group"})
    with pytest.raises(AuthError, match="workers"):
        worker_api().claim_jobs(ClaimOffer(memory=1, cpu_cores=1))


def test_retry_waits_stop_at_once_when_interrupted(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/1/status", status=503)
    stop = threading.Event()
    api = WorkerApi(API, FixedToken(FIXED_TOKEN), Http(retry_s=60, max_backoff_s=30))
    threading.Timer(0.2, stop.set).start()
    import time

    started = time.monotonic()
    with pytest.raises(Interrupted):
        api.session.call("GET", "/jobs/1/status", what="get status", name="status", interrupt=stop)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("value", ["120s", "soon", "Thu, 99 Foo 2026", "nan", "-5", "1e999"])
def test_a_malformed_retry_after_is_ignored(rsps: responses.RequestsMock, value: str) -> None:
    """A Retry-After that is neither seconds nor an HTTP date counts as none (a finite wait): it
    never raises out of the HTTP helper, where it would stop every other job's final status."""
    rsps.get(f"{API}/jobs/1/status", status=503, headers={"Retry-After": value})
    http = Http(retry_s=0)
    with pytest.raises(Transient) as caught:
        http.send("GET", f"{API}/jobs/1/status", what="status")
    assert 0 <= caught.value.retry_after_s < 10**6  # finite: "1e999" and "nan" count as none


def test_a_request_requests_refuses_is_a_bad_response(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/x", body=requests.exceptions.InvalidHeader("bad header"))
    with pytest.raises(BadResponse, match="InvalidHeader"):
        Http(retry_s=0).send("GET", f"{API}/x?sig=secret", what="x")


# --- what an answer may be --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"7": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deep"),
        (b"\xff\xfe not json", "not JSON"),
        (b"{" + b'"k": 1, ' * 10 + b"}", "not JSON"),
    ],
)
def test_an_answer_that_cannot_be_decoded_is_a_bad_response(
    rsps: responses.RequestsMock, body: bytes, why: str
) -> None:
    rsps.get(f"{API}/jobs", body=body)
    with pytest.raises(BadResponse, match=why):
        worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


def test_an_answer_larger_than_the_limit_is_a_bad_response(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fetcher.api.http as http_module

    monkeypatch.setattr(http_module, "MAX_ANSWER_BYTES", 1000)
    rsps.get(f"{API}/jobs", body=b'{"1": "' + b"x" * 5000 + b'"}')
    with pytest.raises(BadResponse, match="larger than"):
        worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


@pytest.fixture
def trickler() -> Iterator[str]:
    """An HTTP server that sends its headers at once, then one byte of body every 0.1 s."""

    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        trickle(conn, 0.1, stop)

    with serving(answer) as base:
        yield f"{base}/jobs"


def test_a_trickling_answer_is_given_up_within_a_deadline(trickler: str) -> None:
    """An answer that trickles in (a byte now and then, each well within the read timeout, which
    bounds each recv, not the answer) is given up within its deadline. Every API call reads its
    whole body through `Http.send`, so a slow or hostile server could otherwise hold the keep-alive
    (and with it the job's slot), the deliverer (every other report behind it) or the claim loop
    indefinitely."""
    http = Http(connect_timeout_s=1.0, read_timeout_s=1.0, retry_s=0)
    http.answer_deadline_s = 2.0
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            http.send("GET", trickler, what="claim jobs")
            outcome["result"] = "answered"
        except Exception as exc:
            outcome["result"] = exc

    started = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(8)
    assert not t.is_alive(), "still reading the answer after 8 s (it trickles for 10000 s)"
    assert time.monotonic() - started < 8
    assert isinstance(outcome["result"], Exception), outcome


# --- redirects -----------------------------------------------------------------------------------
API_ELSEWHERE = "https://api.example"
CLAIM = f"{API_ELSEWHERE}/jobs?memory=1000&cpu_cores=1&gpu_mem=0&limit=1&older_than=0"


def claim(api: WorkerApi) -> object:
    return api.claim_jobs(ClaimOffer(memory=1000, cpu_cores=1), retry_s=0)


def put_running(api: WorkerApi) -> object:
    api.put_status("1", JobStatus.running, retry_s=0)
    return None


def get_status(api: WorkerApi) -> object:
    return api.get_status("1", retry_s=0)


def log_in(api: WorkerApi) -> object:
    login = CognitoLogin(api.http, API_ELSEWHERE, "u", "pw", endpoint="https://cognito.test/")
    return login.token()  # asks /access_info first


API_CALLS: list[tuple[str, str, Callable[[WorkerApi], object]]] = [
    ("GET", CLAIM, claim),
    ("PUT", f"{API_ELSEWHERE}/jobs/1/status?status=running", put_running),
    ("GET", f"{API_ELSEWHERE}/jobs/1/status", get_status),
    ("GET", f"{API_ELSEWHERE}/access_info", log_in),
]


@pytest.mark.parametrize(
    "to", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:2375/containers/json"]
)
@pytest.mark.parametrize(
    ("method", "url", "call"), API_CALLS, ids=[c[2].__name__ for c in API_CALLS]
)
def test_an_api_call_is_not_redirected_to_this_box_or_a_link_local_address(
    rsps_lenient: responses.RequestsMock,
    method: str,
    url: str,
    call: Callable[[WorkerApi], object],
    to: str,
) -> None:
    # Given an API elsewhere whose answer redirects the root daemon to the cloud's metadata
    # service, or to a service on this box
    rsps_lenient.add(method, url, status=307, headers={"Location": to})
    rsps_lenient.add(method, to, json={})
    # When the fetcher makes the call, then it is refused, naming where it was sent, and the
    # daemon never went there
    with pytest.raises(
        BadResponse,
        match=f"redirected to '{re.escape(to)}', this box or a link-local address; refused",
    ):
        call(worker_api(API_ELSEWHERE, retry_s=0))
    assert [c.request.url for c in rsps_lenient.calls] == [url]


def test_an_api_call_still_follows_a_redirect_elsewhere(rsps: responses.RequestsMock) -> None:
    # Given an API_URL in plain http whose proxy redirects to https
    rsps.get(CLAIM.replace("https:", "http:"), status=301, headers={"Location": CLAIM})
    rsps.get(CLAIM, json={})
    assert claim(worker_api(API_ELSEWHERE.replace("https:", "http:"), retry_s=0)).jobs == {}  # type: ignore[attr-defined]


def test_an_api_on_this_box_may_redirect_on_this_box(rsps: responses.RequestsMock) -> None:
    local = "http://127.0.0.1:8001"
    rsps.put(
        f"{local}/jobs/1/status", status=307, headers={"Location": f"{local}/v2/jobs/1/status"}
    )
    rsps.put(f"{local}/v2/jobs/1/status", status=204)
    worker_api(local, retry_s=0).put_status("1", JobStatus.running, retry_s=0)


def test_an_api_redirect_to_another_scheme_is_refused(rsps: responses.RequestsMock) -> None:
    rsps.get(CLAIM, status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(BadResponse, match="redirected to 'file:///etc/passwd', not an http"):
        claim(worker_api(API_ELSEWHERE, retry_s=0))
