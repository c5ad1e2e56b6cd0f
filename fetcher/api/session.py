"""ApiSession: an authenticated call of the worker-facing API, the one path every call of
`WorkerApi` (jobs, statuses) and `FileRequests` (files) takes: the bearer token, the HTTP helper's
timeout, retries and error mapping (`fetcher.api.http`), and one new login after a 401."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from fetcher.api.auth import TokenSource
from fetcher.api.http import Http
from fetcher.errors import AuthError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ApiSession:
    def __init__(self, api_url: str, tokens: TokenSource, http: Http) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.http = http

    def authed(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        return {**(headers or {}), "Authorization": f"Bearer {self.tokens.token()}"}

    def send(self, method: str, path: str, *, what: str, **kw: Any) -> requests.Response:
        """One authenticated try; raises Transient for failures worth another."""
        return self.http.send(
            method, f"{self.api_url}{path}", what=what, headers=self.authed(), **kw
        )

    def relogin_once(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`; on a 401 log in again once (where the token can be renewed) and run it again."""
        try:
            return fn()
        except AuthError as exc:
            if exc.status_code != 401 or not self.tokens.renew():
                raise
            log.info("auth: %s answered 401, logging in again", what)
            return fn()

    def retried(
        self,
        attempt: Callable[[], T],
        what: str,
        *,
        name: str,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
    ) -> T:
        """`attempt` (which raises Transient for a failure worth another try) under the retry
        policy, logging in again once after a 401."""

        def tries() -> T:
            result: T = self.http.call(
                attempt, what, retry_s=retry_s, interrupt=interrupt, name=name
            )
            return result

        return self.relogin_once(tries, what)

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        name: str,
        interrupt: threading.Event | None = None,
        retry_s: float | None = None,
        **kw: Any,
    ) -> requests.Response:
        """An authenticated call of the API: retries transient failures, logs in again on 401."""
        return self.retried(
            lambda: self.send(method, path, what=what, **kw),
            what,
            name=name,
            interrupt=interrupt,
            retry_s=retry_s,
        )
