"""WorkerApi: the jobs and statuses of the worker-facing API (see the shared protocol notes), every
call through one `ApiSession`; the files through `self.files` (`fetcher.api.files`).

Each public method says what it raises. All of them may also raise Interrupted when the caller's
`interrupt` event is set during a wait between tries.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote

from pydantic import ValidationError

from fetcher.api.auth import CognitoLogin, FixedToken, TokenSource
from fetcher.api.files import FileRequests
from fetcher.api.http import Http, read_json
from fetcher.api.session import ApiSession
from fetcher.errors import BadResponse, InvalidJobSpec
from fetcher.logs import shown
from fetcher.models import ClaimOffer, ClaimResult, JobSpecs, JobStatus, valid_queue_id
from fetcher.settings import Settings

log = logging.getLogger(__name__)

MAX_DETAILS_QUOTED = 6000  # runtime_details travels in the query string; keep the URL under 8 KB
FIRST_LINE_MAX = 1000


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


class WorkerApi:
    def __init__(self, api_url: str, tokens: TokenSource, http: Http) -> None:
        self.session = ApiSession(api_url, tokens, http)
        self.files = FileRequests(self.session)

    @property
    def api_url(self) -> str:
        return self.session.api_url

    @property
    def http(self) -> Http:
        return self.session.http

    @property
    def tokens(self) -> TokenSource:
        return self.session.tokens

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
        resp = self.session.call(
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
        self.session.call(
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
        resp = self.session.call(
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


def spec_error(queue_id: str, exc: ValidationError) -> InvalidJobSpec:
    """The first problem of a spec, on one short line: `invalid job spec: <field>: <why>`."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return InvalidJobSpec(
        queue_id, shown(loc, 120, as_repr=False), shown(err["msg"], 200, as_repr=False)
    )
