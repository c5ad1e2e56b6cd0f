"""FileRequests: the job's files in and out through the API's file requests.

`GET /files/{id}/url` and `POST /jobs/{id}/files/url` answer with the request to perform (a
pre-signed S3 URL, or the API's own URL). The fetcher performs only the method it expects, only
to an http(s) URL off this box (unless the API itself is on it), with the bearer token for the
API's own origin only (an `authorization` header the server hands out for any other origin is
dropped; a plain-http URL of an https API's own host goes to the API's origin over TLS). A file
the server refuses or describes unusably is the job's problem (TransferError: `error`); an API
out of reach is this worker's (ApiUnavailable, AuthError).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from pydantic import ValidationError

from fetcher.api.http import Http, Transient, new_session, read_json
from fetcher.api.multipart import MultipartBody
from fetcher.api.peers import (
    DEFAULT_PORTS,
    checked_adapter,
    is_local_host,
    origin,
    redirect_hook,
)
from fetcher.api.session import ApiSession
from fetcher.errors import Interrupted, TransferError
from fetcher.logs import shown, shown_url
from fetcher.models import FileHTTPRequest, UploadType

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SERVED_500_LIMIT = 3  # 500s in a row from the API's own download URL make a file the job's error
Progress = Callable[[int, int | None], None]


def check_relative_path(value: str, what: str) -> None:
    """A path the fetcher sends or honours must be relative and free of `..`. Raises ValueError."""
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ".." in parts or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"{what} {value!r} must be a relative path without '..'")


class FileRequests:
    def __init__(self, session: ApiSession) -> None:
        self.session = session
        self._origin = origin(session.api_url)
        # a server on this box (tests, the mock, a tunnel) may hand out URLs on this box; no other
        self._local_api = self._origin is not None and is_local_host(self._origin[1])
        # file requests: each new connection's peer checked too (a name may resolve anew)
        self._file_session = None if self._local_api else new_session(checked_adapter())
        self._told_upgrade = False  # the log line about plain-http URLs of the API's own host

    @property
    def http(self) -> Http:
        return self.session.http

    def _file_request(self, resp: requests.Response, what: str, method: str) -> FileHTTPRequest:
        """The request the API asks for, if it is one the fetcher performs: `method` (GET for a
        download, POST for an upload: a server does not choose what the daemon does), to an
        http(s) URL that is not this box or a link-local address (unless the API is there too)."""
        body = read_json(resp, what, TransferError)
        try:
            req = FileHTTPRequest.model_validate(body)
        except (ValueError, ValidationError):
            raise TransferError(
                f"{what}: the API's file request is malformed", api_label="bad_response"
            ) from None
        if req.method.strip().upper() != method:
            raise TransferError(
                f"{what}: the API asks for a {shown(req.method, 20)} request; only {method} is made",
                api_label="bad_response",
            )
        self._check_target(req.url, what)
        return self._over_tls(req)

    def _check_target(self, url: str, what: str) -> None:
        """Raises TransferError for a file URL the daemon must not be sent to (also a redirect's)."""
        target = origin(url)
        if target is None:
            raise TransferError(
                f"{what}: the API's file URL {shown_url(url)} is not an http(s) URL",
                api_label="bad_response",
            )
        if not self._local_api and is_local_host(target[1], target[2]):
            raise TransferError(
                f"{what}: the API's file URL {shown_url(url)} points at this box or a link-local"
                " address; refused",
                api_label="bad_response",
            )

    def _redirect_guard(self, what: str) -> Callable[..., None]:
        return redirect_hook(lambda target: self._check_target(target, what))

    def _is_own(self, url: str) -> bool:
        return self._origin is not None and origin(url) == self._origin

    def _over_tls(self, req: FileHTTPRequest) -> FileHTTPRequest:
        """`req` with a plain-http URL of the API's own host (its default port or API_URL's),
        while API_URL is https, sent to API_URL's origin instead: over TLS, with our token.

        The real server builds its download and upload URLs from the Host header the worker sent
        and its own scheme (`request.url` in its `get_file_url`, see the protocol notes); behind a
        TLS-terminating proxy (AWS App Runner, a load balancer) that scheme is plain http. Sent
        as given, the URL would carry the token in clear (or, without it, be refused with 401: the
        server's /download and /upload routes want it); refused, every such deployment would fail
        every file. The same path on API_URL's origin is the route the server meant."""
        api, target = self._origin, origin(req.url)
        if api is None or target is None or api[0] != "https" or target[0] != "http":
            return req
        if target[1] != api[1] or target[2] not in (DEFAULT_PORTS["http"], api[2]):
            return req  # another host or port: another origin, sent as given without a token
        host = f"[{api[1]}]" if ":" in api[1] else api[1]
        if api[2] != DEFAULT_PORTS["https"]:
            host = f"{host}:{api[2]}"
        if not self._told_upgrade:
            self._told_upgrade = True
            log.info(
                "files: the API hands out plain-http URLs of its own host (a TLS-terminating"
                " proxy in front of it): sending them to https://%s instead",
                host,
            )
        url = urlunsplit(("https", host, *urlsplit(req.url.strip())[2:]))
        return req.model_copy(update={"url": url})

    def _headers_for(self, req: FileHTTPRequest) -> dict[str, str]:
        """The headers to perform `req` with: as the server gave them, less any `authorization`,
        plus our bearer token when the URL is the API's own origin however API_URL is spelled (see
        `origin`). For its own download and upload URLs the server echoes the caller's
        `authorization` header: that one is replaced by ours (current, e.g. after a refresh), so
        that exactly one Authorization header is sent. For any other origin (a pre-signed S3 URL,
        another host, the API's host on another port or scheme) none is: a server that echoes our
        token into a URL elsewhere must not hand it to whoever is there."""
        headers = {k: v for k, v in req.headers.items() if k.lower() != "authorization"}
        if self._is_own(req.url):
            headers = self.session.authed(headers)
        return headers

    def _ask(self, what: str, method: str, path: str, **kw: Any) -> FileHTTPRequest:
        """One try of the API's file-request call; the request it answers with, if it is one the
        fetcher performs. Raises Transient, TransferError, JobGone, AuthError."""
        expected = (201, 200) if method == "POST" else (200,)
        resp = self.session.send(
            method, path, what=what, expected=expected, refused=TransferError, **kw
        )
        return self._file_request(resp, what, method)

    def _perform(self, req: FileHTTPRequest, what: str, **kw: Any) -> requests.Response:
        """One try of the file request itself, with its own headers (our token for the API's own
        origin only), every redirect judged. Raises Transient, TransferError."""
        return self.http.send(
            req.method.strip().upper(),
            req.url,
            what=what,
            on_response=self._redirect_guard(what),
            session=self._file_session,
            refused=TransferError,
            **kw,
        )

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
            req = self._ask(what, "GET", f"/files/{quote(file_id, safe='/:')}/url")
            try:
                data = self._perform(req, what, headers=self._headers_for(req), stream=True)
            except Transient as exc:
                self._served_500(req, exc, refusals)
                raise
            refusals.clear()
            return _stream_into(data, out, what, interrupt, progress)

        return self.session.retried(
            attempt, what, name="download", interrupt=interrupt, retry_s=retry_s
        )

    def _served_500(self, req: FileHTTPRequest, exc: Transient, refusals: list[str]) -> None:
        """The server's own download of a file id it cannot send (a directory, say) fails with 500
        while the API itself answers: retrying never cures that. Raises TransferError the
        SERVED_500_LIMIT-th time in a row."""
        if exc.status_code != 500 or not self._is_own(req.url):
            return
        refusals.append(str(exc))
        if len(refusals) >= SERVED_500_LIMIT:
            raise TransferError(
                f"the server fails to send this file ({exc}, {len(refusals)} times while the API"
                " answers)"
            ) from None

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
        where = f"{base_path + '/' if base_path else ''}{name}"
        what = f"job {job_id}: upload {upload_type.value}/{where}"
        size = os.fstat(fh.fileno()).st_size
        params = {"type": upload_type.value, "base_path": base_path}

        def attempt() -> int:
            fh.seek(0)
            path = f"/jobs/{quote(job_id, safe='')}/files/url"
            req = self._ask(what, "POST", path, params=params, job_id=job_id)
            fields = [(k, str(v)) for k, v in req.data.items()]
            body = MultipartBody(fields, fh, name, interrupt=interrupt)
            headers = {**self._headers_for(req), "Content-Type": body.content_type}
            self._perform(req, what, headers=headers, data=body, expected=(200, 201, 204)).close()
            return size

        return self.session.retried(
            attempt, what, name="upload", interrupt=interrupt, retry_s=retry_s
        )


def _stream_into(
    data: requests.Response,
    out: BinaryIO,
    what: str,
    interrupt: threading.Event | None,
    progress: Progress | None,
) -> int:
    """The streamed body of `data` into `out`, checked against its Content-Length. A body cut off
    raises Transient (the download starts again)."""
    total = _content_length(data)
    done = 0
    try:
        with data:
            # read1: whatever has arrived, up to CHUNK; a body that trickles in is still
            # cancellable between two reads (each bounded by the read timeout)
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
        raise Transient(f"transfer broke off after {done} bytes ({type(exc).__name__})") from None
    if total is not None and done != total:
        raise Transient(f"transfer ended after {done} of {total} bytes")
    out.flush()
    return done


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
