"""Where the bearer token comes from: a fixed ACCESS_TOKEN, or a Cognito login refreshed before expiry."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Protocol

from fetcher.api.http import Http
from fetcher.errors import ApiRejected, AuthError, BadResponse, Interrupted
from fetcher.logs import register_secret

log = logging.getLogger(__name__)

# an AWS region name (eu-central-1, us-gov-west-1, ...): it becomes part of the host the password
# is sent to, and it comes from the API's unauthenticated /access_info
AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")


class TokenSource(Protocol):
    def token(self) -> str:
        """The bearer token to send now. Raises AuthError, ApiUnavailable."""

    def renew(self) -> bool:
        """Forget the token after a 401; True if a fresh one can be had (then retry once)."""


class FixedToken:
    """ACCESS_TOKEN: cannot be refreshed; a 401 is final."""

    def __init__(self, token: str) -> None:
        register_secret(token)
        self._token = token

    def token(self) -> str:
        return self._token

    def renew(self) -> bool:
        return False


class CognitoLogin:
    """USER_PASSWORD_AUTH against Cognito (plain JSON over HTTPS, no AWS signing), refreshed early.

    The client id and region come from `GET /access_info`; the endpoint can be overridden so that
    tests and mock_api can stand in for Cognito.
    """

    TARGET = "AWSCognitoIdentityProviderService.InitiateAuth"

    def __init__(
        self,
        http: Http,
        api_url: str,
        username: str,
        password: str,
        *,
        endpoint: str | None = None,
        refresh_margin_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        register_secret(password)
        self._stop = stop or threading.Event()  # ends a login's waits (the daemon stops jobs)
        self._http = http
        self._api_url = api_url
        self._username = username
        self._password = password
        self._endpoint = endpoint
        self._margin = refresh_margin_s
        self._clock = clock
        self._lock = threading.Lock()
        self._client_id: str | None = None
        self._id_token: str | None = None
        self._refresh_token: str | None = None
        self._refresh_at = 0.0

    def token(self) -> str:
        """The current token, logging in or refreshing first when due. One login at a time; a
        thread waiting for another's login, and the login's own retries, stop at `stop`.
        Raises AuthError, ApiUnavailable, BadResponse, Interrupted."""
        while not self._lock.acquire(timeout=0.2):
            if self._stop.is_set():
                raise Interrupted("auth: the fetcher is stopping")
        try:
            return self._current()
        finally:
            self._lock.release()

    def _current(self) -> str:
        if self._id_token is None or self._clock() >= self._refresh_at:
            if self._id_token is not None and self._refresh_token is not None:
                try:
                    self._initiate("REFRESH_TOKEN_AUTH", {"REFRESH_TOKEN": self._refresh_token})
                except AuthError:
                    log.info("auth: token refresh refused, logging in again as %s", self._username)
                    self._login()
            else:
                self._login()
        assert self._id_token is not None
        return self._id_token

    def renew(self) -> bool:
        with self._lock:
            self._id_token = None
            self._refresh_token = None
        return True

    def _login(self) -> None:
        self._initiate(
            "USER_PASSWORD_AUTH", {"USERNAME": self._username, "PASSWORD": self._password}
        )
        log.info("auth: logged in as %s", self._username)

    def _discover(self) -> tuple[str, str]:
        if self._client_id is None or self._endpoint is None:
            resp = self._http.call(
                lambda: self._http.send("GET", f"{self._api_url}/access_info", what="access_info"),
                "access_info",
                name="access_info",
                interrupt=self._stop,
            )
            try:
                cognito = resp.json()["cognito"]
                self._client_id = str(cognito["client_id"])
                region = str(cognito["region"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BadResponse(f"access_info: unexpected answer ({exc!r})") from None
            if self._endpoint is None:
                if not AWS_REGION.fullmatch(region):
                    raise BadResponse(f"access_info: {region[:40]!r} is not an AWS region name")
                self._endpoint = f"https://cognito-idp.{region}.amazonaws.com/"
        return self._endpoint, self._client_id

    def _initiate(self, flow: str, params: dict[str, str]) -> None:
        endpoint, client_id = self._discover()
        body = {"AuthFlow": flow, "ClientId": client_id, "AuthParameters": params}
        headers = {"X-Amz-Target": self.TARGET, "Content-Type": "application/x-amz-json-1.1"}
        try:
            resp = self._http.call(
                lambda: self._http.send(
                    "POST", endpoint, what="cognito login", headers=headers, data=_json(body)
                ),
                "cognito login",
                name="login",
                interrupt=self._stop,
            )
        except ApiRejected as exc:
            # Cognito answers 400 {"__type": "NotAuthorizedException", "message": ...} for bad credentials
            raise AuthError(
                f"auth: login as {self._username} refused: {exc}", exc.status_code
            ) from None
        try:
            result = resp.json()["AuthenticationResult"]
            id_token = str(result["IdToken"])
            expires_in = float(result["ExpiresIn"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadResponse(f"auth: unexpected Cognito answer ({exc!r})") from None
        register_secret(id_token)
        self._id_token = id_token
        # refresh ahead of expiry: `margin` early, or at 80 % of a short lifetime
        self._refresh_at = self._clock() + expires_in - min(self._margin, expires_in / 5)
        if result.get("RefreshToken"):
            self._refresh_token = str(result["RefreshToken"])
            register_secret(self._refresh_token)


def _json(body: object) -> str:
    return json.dumps(body)
