"""WorkerApi: every call of the worker-facing API (see shared protocol notes), through one helper.

Each public method says what it raises. All of them may also raise Interrupted when the caller's
`interrupt` event is set during a wait between tries.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.exceptions
from pydantic import ValidationError
from requests_toolbelt import MultipartEncoder
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from fetcher.api.auth import CognitoLogin, FixedToken, TokenSource
from fetcher.api.http import Http, Transient, new_session, read_json, shown_url
from fetcher.api.peers import checked_adapter, is_local_host, norm_host
from fetcher.errors import (
    ApiRejected,
    AuthError,
    BadResponse,
    Interrupted,
    InvalidJobSpec,
    TransferError,
)
from fetcher.logs import shown
from fetcher.models import (
    ClaimOffer,
    ClaimResult,
    FileHTTPRequest,
    JobSpecs,
    JobStatus,
    UploadType,
    valid_queue_id,
)
from fetcher.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_DETAILS_QUOTED = 6000  # runtime_details travels in the query string; keep the URL under 8 KB
FIRST_LINE_MAX = 1000
SERVED_500_LIMIT = 3  # 500s in a row from the API's own download URL make a file the job's error
Progress = Callable[[int, int | None], None]


def fit_details(details: str) -> str:
    """`details` cut to fit in a query string: its first line (how the job ended) is always kept,
    then as much of the end of the rest (the newest log lines) as fits."""
    if len(quote(details)) <= MAX_DETAILS_QUOTED:
        return details
    first, _, rest = details.partition("\n")
    first = first[:FIRST_LINE_MAX]
    if len(quote(first)) > MAX_DETAILS_QUOTED // 2:
        first = first[: FIRST_LINE_MAX // 4]
    head = first + "\n…"
    budget = MAX_DETAILS_QUOTED - len(quote(head))
    lo, hi = 0, len(rest)  # the longest tail of `rest` whose quoted form fits the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(quote(rest[-mid:])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return head + (rest[-lo:] if lo else "")


def check_relative_path(value: str, what: str) -> None:
    """A path the fetcher sends or honours must be relative and free of `..`. Raises ValueError."""
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"{what} {value!r} must be a relative path without '..'")


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """`(scheme, host, port)` of an http(s) URL, normalised so that every spelling of one origin
    compares equal: scheme and host in lower case, the default port (80, 443) made explicit, IPv6
    brackets dropped and the address written one way, a trailing dot on the host and everything
    after the authority (path, trailing slash, query) ignored. None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    host = norm_host(parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    found = scheme, host, DEFAULT_PORTS[scheme] if port is None else port
    # The connection is made where urllib3 (under requests) parses the host, and the two parsers
    # disagree on some spellings (`http://other\@api/`: urlsplit reads `api`, urllib3 `other`).
    # Only a URL both read the same way is an origin at all.
    try:
        u3 = parse_url(url.strip())
    except LocationParseError:
        return None
    u3_scheme = (u3.scheme or "").lower()
    u3_port = u3.port if u3.port is not None else DEFAULT_PORTS.get(u3_scheme)
    if (u3_scheme, norm_host(u3.host or ""), u3_port) != found:
        return None
    return found


class WorkerApi:
    def __init__(self, api_url: str, tokens: TokenSource, http: Http) -> None:
        self.api_url = api_url.rstrip("/")
        self._origin = origin(self.api_url)
        # a server on this box (tests, the mock, a tunnel) may hand out URLs on this box; no other
        self._local_api = self._origin is not None and is_local_host(self._origin[1])
        # file requests: each new connection's peer checked too (a name may resolve anew)
        self._file_session = None if self._local_api else new_session(checked_adapter())
        self.tokens = tokens
        self.http = http

    @classmethod
    def from_settings(cls, settings: Settings, *, stop: threading.Event | None = None) -> WorkerApi:
        """The client the settings describe; `stop` ends a login's waits (see CognitoLogin)."""
        http = Http(
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            retry_s=settings.api_retry_s,
        )
        tokens: TokenSource
        if settings.ignored_username is not None:
            log.info(
                "auth: ACCESS_TOKEN is set; ignoring USERNAME=%s and any PASSWORD",
                settings.ignored_username,
            )
        if settings.access_token is not None:
            tokens = FixedToken(settings.access_token.get_secret_value())
        else:
            assert settings.username is not None and settings.password is not None
            tokens = CognitoLogin(
                http,
                settings.api_url,
                settings.username,
                settings.password.get_secret_value(),
                endpoint=settings.cognito_endpoint,
                stop=stop,
            )
        return cls(settings.api_url, tokens, http)

    # --- the helper --------------------------------------------------------------------------
    def _authed(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        return {**(headers or {}), "Authorization": f"Bearer {self.tokens.token()}"}

    def _send_api(self, method: str, path: str, *, what: str, **kw: Any) -> requests.Response:
        """One authenticated try; raises Transient for failures worth another."""
        return self.http.send(
            method, f"{self.api_url}{path}", what=what, headers=self._authed(), **kw
        )

    def _relogin_once(self, fn: Callable[[], Any], what: str) -> Any:
        """Run `fn`; on a 401 log in again once (where the token can be renewed) and run it again."""
        try:
            return fn()
        except AuthError as exc:
            if exc.status_code != 401 or not self.tokens.renew():
                raise
            log.info("auth: %s answered 401, logging in again", what)
            return fn()

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
        name: str | None = None,
        **kw: Any,
    ) -> requests.Response:
        """An authenticated call of the API: retries transient failures, logs in again once on 401."""
        return self._relogin_once(  # type: ignore[no-any-return]
            lambda: self.http.call(
                lambda: self._send_api(method, path, what=what, **kw),
                what,
                retry_s=retry_s,
                interrupt=interrupt,
                name=name,
            ),
            what,
        )

    # --- jobs --------------------------------------------------------------------------------
    def claim_jobs(
        self,
        offer: ClaimOffer,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> ClaimResult:
        """GET /jobs: claim jobs that fit `offer`. Keys are queue ids, the id of every later call.

        A queue id that is not a small integer is refused here, at the boundary: logged once and
        never used again (past this method a queue id is a safe token, never a path fragment). A
        job whose spec cannot be parsed is returned in `invalid` (it was claimed: report it).
        Raises ApiUnavailable, AuthError, ApiRejected, BadResponse.
        """
        resp = self._call(
            "GET",
            "/jobs",
            what="claim jobs",
            name="claim",
            params=offer.to_query(),
            interrupt=interrupt,
            retry_s=retry_s,
        )
        body = read_json(resp, "claim jobs")
        if not isinstance(body, dict):
            raise BadResponse(f"claim jobs: expected an object of jobs, got {type(body).__name__}")
        result = ClaimResult()
        for raw_id, raw in body.items():
            queue_id = valid_queue_id(raw_id)
            if queue_id is None:
                log.error(
                    "claim: refused a job whose queue id %s is not a small integer; nothing was done"
                    " with it (the server will time it out)",
                    shown(raw_id, 40),
                )
                result.refused.append(shown(raw_id, 40))
                continue
            try:
                result.jobs[queue_id] = JobSpecs.model_validate(raw)
            except ValidationError as exc:
                result.invalid.append(spec_error(queue_id, exc))
            except RecursionError:
                result.invalid.append(InvalidJobSpec(queue_id, "(root)", "nested too deep"))
        return result

    def put_status(
        self,
        job_id: str,
        status: JobStatus,
        runtime_details: str | None = None,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> None:
        """PUT /jobs/{id}/status: also the keep-alive. Raises JobGone (404), ApiUnavailable, AuthError."""
        params: dict[str, str] = {"status": status.value}
        if runtime_details:
            params["runtime_details"] = fit_details(runtime_details)
        self._call(
            "PUT",
            f"/jobs/{quote(job_id, safe='')}/status",
            what=f"status {status.value}",
            name="status",
            expected=(204, 200),
            params=params,
            job_id=job_id,
            interrupt=interrupt,
            retry_s=retry_s,
        )

    def get_status(
        self,
        job_id: str,
        *,
        retry_s: float | None = None,
        interrupt: threading.Event | None = None,
    ) -> JobStatus:
        """GET /jobs/{id}/status. Raises JobGone (404: unknown), ApiUnavailable, BadResponse."""
        resp = self._call(
            "GET",
            f"/jobs/{quote(job_id, safe='')}/status",
            what="get status",
            name="status",
            job_id=job_id,
            retry_s=retry_s,
            interrupt=interrupt,
        )
        value = read_json(resp, f"job {job_id}: get status")
        try:
            return JobStatus(value)
        except ValueError:
            raise BadResponse(
                f"job {job_id}: unexpected status answer {shown(value, 40)}"
            ) from None

    # --- files -------------------------------------------------------------------------------
    def _file_request(self, resp: requests.Response, what: str, method: str) -> FileHTTPRequest:
        """The request the API asks for, if it is one the fetcher performs: `method` (GET for a
        download, POST for an upload: a server does not choose what the daemon does), to an
        http(s) URL that is not this box or a link-local address (unless the API is there too)."""
        body = read_json(resp, what)
        try:
            req = FileHTTPRequest.model_validate(body)
        except (ValueError, ValidationError):
            raise BadResponse(f"{what}: the API's file request is malformed") from None
        if req.method.strip().upper() != method:
            raise BadResponse(
                f"{what}: the API asks for a {shown(req.method, 20)} request; only {method} is made"
            )
        self._check_target(req.url, what)
        return req

    def _check_target(self, url: str, what: str) -> None:
        """Raises BadResponse for a file URL the daemon must not be sent to (also a redirect's)."""
        target = origin(url)
        if target is None:
            raise BadResponse(f"{what}: the API's file URL {shown_url(url)} is not an http(s) URL")
        if not self._local_api and is_local_host(target[1], target[2]):
            raise BadResponse(
                f"{what}: the API's file URL {shown_url(url)} points at this box or a link-local"
                " address; refused"
            )

    def _redirect_guard(self, what: str) -> Callable[..., None]:
        def guard(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
            if resp.is_redirect:
                try:
                    self._check_target(urljoin(resp.url, resp.headers.get("location", "")), what)
                except BadResponse:
                    resp.close()
                    raise

        return guard

    def _is_own(self, url: str) -> bool:
        return self._origin is not None and origin(url) == self._origin

    def _headers_for(self, req: FileHTTPRequest) -> dict[str, str]:
        """The headers to perform `req` with: as the server gave them, plus our bearer token when the
        URL is the API's own origin however API_URL is spelled (see `origin`), and never for another
        origin (a pre-signed S3 URL). For its own download and upload URLs the server echoes the
        caller's `authorization` header: that one is replaced by ours (current, e.g. after a
        refresh), so that exactly one Authorization header is sent."""
        headers = dict(req.headers)
        if self._is_own(req.url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers = self._authed(headers)
        return headers

    def download_file(
        self,
        file_id: str,
        out: BinaryIO,
        *,
        interrupt: threading.Event | None = None,
        progress: Progress | None = None,
        retry_s: float | None = None,
    ) -> int:
        """Download file `file_id` into `out`, streamed (never whole in memory), exactly the bytes
        the server sent (a `Content-Encoding: gzip` body is stored as sent and checked against its
        length). A broken transfer starts again from the beginning of `out`. Returns the size.
        Raises TransferError (missing, forbidden, refused), ApiUnavailable, AuthError, Interrupted.
        """
        if ".." in file_id.split("/"):
            raise TransferError(f"file id {file_id!r} contains '..'")
        what = f"download {file_id}"
        refusals: list[str] = []  # the API answered, its own download URL then failed with 500

        def attempt() -> int:
            out.seek(0)
            out.truncate()
            resp = self._send_api("GET", f"/files/{quote(file_id, safe='/:')}/url", what=what)
            req = self._file_request(resp, what, "GET")
            try:
                data = self.http.send(
                    "GET",
                    req.url,
                    what=what,
                    headers=self._headers_for(req),
                    stream=True,
                    on_response=self._redirect_guard(what),
                    session=self._file_session,
                )
            except Transient as exc:
                # The server's own download of a file id it cannot send (a directory, say) fails
                # with 500 while the API itself answers: retrying never cures that.
                if exc.status_code == 500 and self._is_own(req.url):
                    refusals.append(str(exc))
                    if len(refusals) >= SERVED_500_LIMIT:
                        raise TransferError(
                            f"the server fails to send this file ({exc}, {len(refusals)} times"
                            " while the API answers)"
                        ) from None
                raise
            refusals.clear()
            total = _content_length(data)
            done = 0
            try:
                with data:
                    # read1: whatever has arrived, up to CHUNK; a body that trickles in is
                    # still cancellable between two reads (each bounded by the read timeout)
                    while chunk := data.raw.read1(CHUNK, decode_content=False):
                        if interrupt is not None and interrupt.is_set():
                            raise Interrupted(f"{what}: interrupted")
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            except (
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
            ) as exc:
                raise Transient(
                    f"transfer broke off after {done} bytes ({type(exc).__name__})"
                ) from None
            if total is not None and done != total:
                raise Transient(f"transfer ended after {done} of {total} bytes")
            out.flush()
            return done

        return self._retry_transfer(attempt, what, interrupt, retry_s, "download")

    def upload_file(
        self,
        job_id: str,
        fh: BinaryIO,
        name: str,
        upload_type: UploadType,
        base_path: str,
        *,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> int:
        """Upload the open file `fh` as `<type dir>/<base_path>/<name>`: a streamed multipart POST,
        the API's `data` fields first, then the file. Returns the size.
        Raises JobGone, TransferError (request refused), ApiUnavailable, AuthError, Interrupted.
        """
        if base_path:
            check_relative_path(base_path, "base_path")
        if not name or "/" in name or name in (".", ".."):
            raise TransferError(f"file name {name!r} cannot be uploaded")
        what = (
            f"job {job_id}: upload {upload_type.value}/{base_path + '/' if base_path else ''}{name}"
        )
        size = os.fstat(fh.fileno()).st_size

        def attempt() -> int:
            fh.seek(0)
            resp = self._send_api(
                "POST",
                f"/jobs/{quote(job_id, safe='')}/files/url",
                what=what,
                expected=(201, 200),
                params={"type": upload_type.value, "base_path": base_path},
                job_id=job_id,
            )
            req = self._file_request(resp, what, "POST")
            fields: list[tuple[str, Any]] = [(k, str(v)) for k, v in req.data.items()]
            fields.append(
                ("file", (name, _Interruptible(fh, interrupt), "application/octet-stream"))
            )
            body = MultipartEncoder(fields=fields)
            headers = {**self._headers_for(req), "Content-Type": body.content_type}
            self.http.send(
                "POST",
                req.url,
                what=what,
                headers=headers,
                data=body,
                expected=(200, 201, 204),
                on_response=self._redirect_guard(what),
                session=self._file_session,
            ).close()
            return size

        return self._retry_transfer(attempt, what, interrupt, retry_s, "upload")

    def _retry_transfer(
        self,
        attempt: Callable[[], int],
        what: str,
        interrupt: threading.Event | None,
        retry_s: float | None,
        name: str,
    ) -> int:
        """Retry a whole transfer; a refusal (missing, forbidden, malformed) becomes TransferError."""
        try:
            return self._relogin_once(  # type: ignore[no-any-return]
                lambda: self.http.call(
                    attempt, what, interrupt=interrupt, retry_s=retry_s, name=name
                ),
                what,
            )
        except (ApiRejected, BadResponse) as exc:
            raise TransferError(str(exc)) from None
        except AuthError as exc:
            if exc.status_code == 403:  # outside the user's store, or an absolute base_path
                raise TransferError(str(exc)) from None
            raise


def spec_error(queue_id: str, exc: ValidationError) -> InvalidJobSpec:
    """The first problem of a spec, on one short line: `invalid job spec: <field>: <why>`."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return InvalidJobSpec(
        queue_id, shown(loc, 120, as_repr=False), shown(err["msg"], 200, as_repr=False)
    )


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


class _Interruptible:
    """A file wrapper whose reads stop an upload at once when `interrupt` is set."""

    def __init__(self, fh: Any, interrupt: threading.Event | None) -> None:
        self._fh = fh
        self._interrupt = interrupt
        self.name = getattr(fh, "name", "file")

    def read(self, n: int = -1) -> bytes:
        if self._interrupt is not None and self._interrupt.is_set():
            raise Interrupted("upload interrupted")
        data: bytes = self._fh.read(n)
        return data

    def __len__(self) -> int:  # MultipartEncoder asks for the length to set Content-Length
        return int(os.fstat(self._fh.fileno()).st_size - self._fh.tell())
