"""The one helper every HTTP call goes through: timeouts, retries with backoff and jitter, error mapping.

Transient failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff and
full jitter for up to `retry_s` seconds, then raise ApiUnavailable. 401/403 raise AuthError, 404
raises JobGone where the call is about a job, any other 4xx raises ApiRejected. Waits between tries
stop at once when the caller's `interrupt` event is set (Interrupted). Error texts never contain
headers, and URLs in them lose their query string (pre-signed URLs carry signatures).

No call is redirected to this box or a link-local address (the cloud's metadata service), unless
it was made there in the first place: the rule file requests follow (`fetcher.api.files`), for
the API's own calls too (`/jobs`, statuses, `/access_info`, the login), whose answers a hostile or
hijacked server could otherwise point at the daemon's neighbours.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
import urllib3.exceptions
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay
from tenacity.wait import wait_random_exponential

from fetcher import __version__
from fetcher.api.peers import is_local_host, origin, redirect_hook
from fetcher.errors import (
    ApiRejected,
    ApiUnavailable,
    AuthError,
    BadResponse,
    Interrupted,
    JobGone,
)
from fetcher.logs import redact, safe_url, shown_url

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a claim with limit=1 is a few KB; a server may send anything
_NEVER = threading.Event()
#: a file request's refusal class (TransferError), or None: the API's own errors
Refused = Callable[..., Exception] | None


def bad_answer(message: str, refused: Refused = None) -> Exception:
    """An answer that cannot be used: BadResponse, or for a file request its refusal class."""
    if refused is None:
        return BadResponse(message)
    return refused(message, api_label="bad_response")


def read_json(resp: requests.Response, what: str, refused: Refused = None) -> Any:
    """The answer's JSON (its body was read, bounded, by `Http.send`). Whatever goes wrong while
    decoding it (bytes that are not JSON, JSON nested too deep for the parser) is a BadResponse
    (see `bad_answer`)."""
    try:
        return json.loads(resp.content)
    except RecursionError:
        raise bad_answer(f"{what}: the answer is JSON nested too deep", refused) from None
    except Exception as exc:  # noqa: BLE001 - ValueError, UnicodeDecodeError, MemoryError, ...
        raise bad_answer(
            f"{what}: the answer is not JSON ({type(exc).__name__})", refused
        ) from None


def _read_bounded(
    resp: requests.Response, what: str, deadline_s: float, refused: Refused = None
) -> None:
    """Read the whole body now, at most MAX_ANSWER_BYTES (a server may send gigabytes) and within
    `deadline_s` (the read timeout bounds each recv, and a server may send a byte now and then for
    ever), so that `resp.content` and `resp.json()` work as usual. A body cut off raises the
    connection errors `send` treats as transient, so does one too slow; one too large is a
    BadResponse."""
    deadline = time.monotonic() + deadline_s
    parts: list[bytes] = []
    size = 0
    with resp:
        while True:
            if time.monotonic() > deadline:
                raise Transient(f"{what}: the answer took longer than {deadline_s:.0f} s")
            piece = resp.raw.read1(64 * 1024, decode_content=True)  # one recv at most
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
            if size > MAX_ANSWER_BYTES:
                raise bad_answer(
                    f"{what}: the answer is larger than {MAX_ANSWER_BYTES // 2**20} MB", refused
                )
    resp._content = b"".join(parts)
    resp._content_consumed = True  # type: ignore[attr-defined]


class Transient(Exception):
    """A failure worth another try; `retry_after_s` comes from a Retry-After header."""

    def __init__(
        self, message: str, status_code: int | None = None, retry_after_s: float = 0
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


def _detail(resp: requests.Response) -> str:
    """The start of an error answer's body (read with a bound: a server may send gigabytes)."""
    try:
        if getattr(resp, "_content_consumed", True):
            raw = resp.content[:4096]
        else:
            raw = resp.raw.read(4096, decode_content=True)
    except Exception:  # noqa: BLE001 - a body that cannot be read says nothing
        return ""
    text = raw.decode("utf-8", errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    text = str(body).strip().replace("\n", " ")
    return redact(text[:300])


def _retry_after(resp: requests.Response) -> float:
    """Retry-After in seconds (a number or an HTTP date); 0 when missing or malformed."""
    value = resp.headers.get("Retry-After")
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
            seconds = parsed.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0  # e.g. "120s": the backoff decides
    return max(0.0, seconds) if math.isfinite(seconds) else 0.0


def redirect_guard(url: str, what: str, refused: Refused = None) -> Callable[..., None]:
    """The response hook of a call to `url`: a redirect to a URL that is not plain http(s), or to
    this box or a link-local address while `url` is elsewhere, is refused with a bad answer (see
    `bad_answer`) naming where it pointed, before requests follows it."""
    here = origin(url)

    def check(target: str) -> None:
        there = origin(target)
        if there is None:
            raise bad_answer(
                f"{what}: the server redirected to {shown_url(target)}, not an http(s) URL;"
                " refused",
                refused,
            )
        if is_local_host(there[1], there[2]) and not (here and is_local_host(here[1], here[2])):
            raise bad_answer(
                f"{what}: the server redirected to {shown_url(target)}, this box or a link-local"
                " address; refused",
                refused,
            )

    return redirect_hook(check)


def new_session(adapter: requests.adapters.HTTPAdapter | None = None) -> requests.Session:
    """A session for several jobs at once, each with parallel transfers and a keep-alive."""
    session = requests.Session()
    adapter = adapter or requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"decode-fetcher/{__version__}"
    return session


class Http:
    """A requests session with timeouts, retries and error mapping. Thread-safe for our use."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        retry_s: float = 120.0,
        max_backoff_s: float = 30.0,
        answer_deadline_s: float = 300.0,
        session: requests.Session | None = None,
    ) -> None:
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.answer_deadline_s = answer_deadline_s  # a whole (non-streamed) answer's body
        self.retry_s = retry_s
        self.max_backoff_s = max_backoff_s
        self.session = session if session is not None else new_session()
        # told of each named call's end: (name, the exception it ended with or None, retries)
        self.observe: Callable[[str, BaseException | None, int], None] | None = None

    def retrying(
        self, what: str, *, retry_s: float | None = None, interrupt: threading.Event | None = None
    ) -> Retrying:
        """A tenacity policy for an operation that raises Transient on a failure worth retrying."""
        event = interrupt or _NEVER
        budget = self.retry_s if retry_s is None else retry_s
        exp = wait_random_exponential(multiplier=0.5, max=self.max_backoff_s)

        def wait(state: RetryCallState) -> float:
            delay = exp(state)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Transient) and exc.retry_after_s:
                delay = max(delay, min(exc.retry_after_s, self.max_backoff_s))
            # never sleep past the budget
            delay = max(0.0, min(delay, budget - (state.seconds_since_start or 0.0)))
            log.debug(
                "%s: try %d failed (%s), next in %.1f s", what, state.attempt_number, exc, delay
            )
            return float(delay)

        def sleep(seconds: float) -> None:
            if event.wait(seconds):
                raise Interrupted(f"{what}: interrupted")

        return Retrying(
            retry=retry_if_exception_type(Transient),
            wait=wait,
            stop=stop_after_delay(budget),
            sleep=sleep,
            reraise=True,
        )

    def call(
        self,
        op: Callable[[], Any],
        what: str,
        *,
        retry_s: float | None = None,
        interrupt: threading.Event | None = None,
        name: str | None = None,
    ) -> Any:
        """Run `op` under the retry policy; Transient failures that outlive it become ApiUnavailable.
        `retry_s=0` makes exactly one try. `name` (a short fixed call name) is what `observe`
        reports the call's outcome and retries under."""
        started = time.monotonic()
        attempts = 0
        failure: BaseException | None = None
        try:
            for attempt in self.retrying(what, retry_s=retry_s, interrupt=interrupt):
                with attempt:
                    attempts += 1
                    if interrupt is not None and interrupt.is_set():
                        raise Interrupted(f"{what}: interrupted")  # noqa: TRY301
                    return op()
        except Transient as exc:
            failure = ApiUnavailable(
                f"{what}: {exc} (gave up after {attempts} tries in {time.monotonic() - started:.0f} s)",
                exc.status_code,
            )
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if self.observe is not None and name is not None:
                self.observe(name, failure, max(attempts - 1, 0))
        assert failure is not None  # only a Transient that outlived the retries gets here
        raise failure from None

    def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        expected: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        stream: bool = False,
        job_id: str | None = None,
        on_response: Callable[..., None] | None = None,
        session: requests.Session | None = None,
        refused: Refused = None,
    ) -> requests.Response:
        """One try: send, and map the answer (`error_for_status`). Raises Transient for a failure
        worth retrying. `on_response` sees every answer, each redirect's too, and may raise to
        refuse it (by default `redirect_guard`: no redirect to this box); `session` replaces the
        helper's own (whose headers it does not carry); `refused`: the class of a refusal of a
        file request (see `error_for_status`)."""
        resp = self._request(
            method,
            url,
            what,
            session=session or self.session,
            stream=stream,
            refused=refused,
            headers=dict(headers or {}),
            params=params,
            json=json,
            data=data,
            hooks={"response": [on_response or redirect_guard(url, what, refused)]},
        )
        if resp.status_code in expected:
            return resp
        status = resp.status_code
        detail = _detail(resp)
        resp.close()
        raise error_for_status(status, detail, what, job_id, _retry_after(resp), refused)

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        session: requests.Session,
        stream: bool,
        refused: Refused,
        **kw: Any,
    ) -> requests.Response:
        """The request, its body read (bounded) unless `stream`; a failure to get an answer at
        all is Transient (the connection) or a bad answer (what led here was wrong)."""
        try:
            resp = session.request(method, url, stream=True, timeout=self.timeout, **kw)
            if not stream:
                _read_bounded(resp, what, self.answer_deadline_s, refused)
            return resp
        except (urllib3.exceptions.LocationValueError, requests.exceptions.InvalidURL) as exc:
            raise bad_answer(
                f"{what}: cannot use the URL given ({type(exc).__name__})", refused
            ) from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        ) as exc:
            # a connection cut mid-answer is as transient as one refused
            raise Transient(f"{type(exc).__name__} on {method} {safe_url(url)}") from None
        except (requests.RequestException, ValueError, UnicodeError) as exc:
            # a scheme requests has no adapter for, no host, a redirect loop, a header it refuses:
            # the answer that led here was wrong, and another try would be the same (requests'
            # exceptions are OSErrors: left alone they would pass for a local disk's failure)
            raise bad_answer(
                f"{what}: {method} {shown_url(url)} failed: {type(exc).__name__}", refused
            ) from None


def error_for_status(
    status: int,
    detail: str,
    what: str,
    job_id: str | None = None,
    retry_after_s: float = 0.0,
    refused: Refused = None,
) -> Exception:
    """The one mapping of an HTTP error answer: Transient (429, 5xx: worth another try),
    AuthError (401, 403), JobGone (404 on a job), else ApiRejected. With `refused` (a file
    request's class, TransferError), a refusal that another try would not change (403, 404, 4xx)
    is that class instead: the file, not this worker, is the problem."""
    if status in TRANSIENT_STATUS:
        return Transient(f"HTTP {status} {detail}", status, retry_after_s)
    if status == 401 or (status == 403 and refused is None):
        return AuthError(f"{what}: HTTP {status}: {detail}", status)
    if status == 404 and job_id is not None:
        return JobGone(f"job {job_id}: {what}: the job is no longer this worker's (HTTP 404)", 404)
    if refused is not None:
        return refused(f"{what}: HTTP {status}: {detail}", api_label=_label(status))
    return ApiRejected(f"{what}: HTTP {status}: {detail}", status)


def _label(status: int) -> str:
    return "auth" if status in (401, 403) else "rejected"
