"""Where the bearer token comes from: a Cognito login (USER_PASSWORD_AUTH, the ID token,
refreshed before expiry, logged in again once after a 401) whose password goes only to an AWS
region's endpoint, and whose secrets never reach a log."""

from __future__ import annotations

import contextlib
import json
import logging
from urllib.parse import urlsplit

import pytest
import responses
from responses import matchers

from fetcher.api.auth import CognitoLogin
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import AuthError, BadResponse
from fetcher.logs import RedactingFilter
from fetcher.models import JobStatus
from tests.fakes import FakeClock
from tests.helpers import API, body_of


def cognito_api(clock: FakeClock, endpoint: str | None = "http://cognito.test/") -> WorkerApi:
    http = Http(retry_s=1, max_backoff_s=0.01)
    return WorkerApi(
        API,
        CognitoLogin(http, API, "alice", "s3cret-password", endpoint=endpoint, clock=clock),
        http,
    )


def auth_result(
    token: str, refresh: str | None = "refresh-tok-1", expires: int = 3600
) -> dict[str, object]:
    result: dict[str, object] = {"IdToken": token, "ExpiresIn": expires}
    if refresh:
        result["RefreshToken"] = refresh
    return {"AuthenticationResult": result}


def access_info(rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{API}/access_info",
        json={"cognito": {"user_pool_id": "p", "client_id": "cid", "region": "eu-central-1"}},
    )


def test_login_uses_user_password_auth_and_the_id_token(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post(
        "http://cognito.test/",
        json=auth_result("id-token-AAAA"),
        match=[
            matchers.header_matcher(
                {
                    "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
                    "Content-Type": "application/x-amz-json-1.1",
                }
            )
        ],
    )
    rsps.get(f"{API}/jobs/1/status", json="running")
    assert cognito_api(FakeClock(1000.0)).get_status("1") == JobStatus.running
    body = json.loads(body_of(rsps.calls[1]))
    assert body == {
        "AuthFlow": "USER_PASSWORD_AUTH",
        "ClientId": "cid",
        "AuthParameters": {"USERNAME": "alice", "PASSWORD": "s3cret-password"},
    }
    assert rsps.calls[2].request.headers["Authorization"] == "Bearer id-token-AAAA"


def test_default_endpoint_is_the_regions_cognito(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("https://cognito-idp.eu-central-1.amazonaws.com/", json=auth_result("id-1"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    cognito_api(FakeClock(1000.0), endpoint=None).get_status("1")


def test_token_is_refreshed_before_expiry(rsps: responses.RequestsMock) -> None:
    clock = FakeClock(1000.0)
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-1", expires=3600))
    rsps.post("http://cognito.test/", json=auth_result("id-2", refresh=None))
    rsps.get(f"{API}/jobs/1/status", json="running")
    api = cognito_api(clock)
    api.get_status("1")
    clock.now += 3560  # within a minute of expiry
    api.get_status("1")
    refresh = json.loads(body_of(rsps.calls[3]))
    assert refresh["AuthFlow"] == "REFRESH_TOKEN_AUTH"
    assert refresh["AuthParameters"] == {"REFRESH_TOKEN": "refresh-tok-1"}
    assert rsps.calls[4].request.headers["Authorization"] == "Bearer id-2"


def test_401_logs_in_again_once_then_retries(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-old"))
    rsps.get(f"{API}/jobs/1/status", status=401, json={"detail": "Not verified"})
    rsps.post("http://cognito.test/", json=auth_result("id-new"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    assert cognito_api(FakeClock(1000.0)).get_status("1") == JobStatus.running
    assert json.loads(body_of(rsps.calls[3]))["AuthFlow"] == "USER_PASSWORD_AUTH"
    assert rsps.calls[4].request.headers["Authorization"] == "Bearer id-new"


def test_second_401_after_relogin_is_an_auth_error(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-1"))
    rsps.get(f"{API}/jobs/1/status", status=401, json={"detail": "Not verified"})
    with pytest.raises(AuthError):
        cognito_api(FakeClock(1000.0)).get_status("1")


def test_wrong_password_is_an_auth_error_without_the_password(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post(
        "http://cognito.test/",
        status=400,
        json={"__type": "NotAuthorizedException", "message": "Incorrect username or password."},
    )
    with pytest.raises(AuthError) as info:
        cognito_api(FakeClock(1000.0)).get_status("1")
    assert "Incorrect username or password" in str(info.value)
    assert "s3cret-password" not in str(info.value)


def test_secrets_are_redacted_from_log_lines_and_tracebacks(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-token-SECRET-VALUE"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    cognito_api(FakeClock(1000.0)).get_status("1")
    caplog.handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.propagate = True
    logger.warning(
        "oops token=%s password=%s url=%s",
        "id-token-SECRET-VALUE",
        "s3cret-password",
        "https://s3/x?X-Amz-Signature=deadbeef&a=1",
    )
    try:
        raise RuntimeError("failed with refresh-tok-1")  # noqa: TRY301
    except RuntimeError:
        logger.exception("traceback")
    text = caplog.text
    assert "id-token-SECRET-VALUE" not in text and "s3cret-password" not in text
    assert "deadbeef" not in text and "refresh-tok-1" not in text
    assert "***" in text


# --- the Cognito endpoint comes from the region GET /access_info answers --------------------
def login(rsps: responses.RequestsMock, region: str) -> list[str]:
    """Log in against an API that answers `region`; the hosts the password was sent to."""
    rsps.get(
        f"{API}/access_info",
        json={"cognito": {"user_pool_id": "p", "client_id": "c", "region": region}},
    )
    rsps.add_callback(
        responses.POST,
        __import__("re").compile(r".*"),
        callback=lambda req: (
            200,
            {},
            '{"AuthenticationResult": {"IdToken": "t", "ExpiresIn": 3600}}',
        ),
    )
    auth = CognitoLogin(Http(retry_s=0.2, max_backoff_s=0.01), API, "worker", "s3cret-password")
    with contextlib.suppress(BadResponse):
        auth.token()
    return [
        urlsplit(c.request.url or "").hostname or ""
        for c in rsps.calls
        if c.request.method == "POST"
    ]


@pytest.mark.parametrize(
    "region",
    ["evil.example/#", "evil.example#", "x.evil.example/", "eu-central-1.evil.example?", "a@b"],
)
def test_the_password_goes_only_to_an_amazonaws_host(
    rsps_lenient: responses.RequestsMock, region: str
) -> None:
    """The Cognito endpoint is built from the `region` that `GET /access_info` answers (the API, no
    auth, possibly plain http): a region that is no AWS region name (`evil.example/#` would make the
    endpoint `https://cognito-idp.evil.example/#.amazonaws.com/`) is a bad answer, and the worker's
    USERNAME and PASSWORD go to no host but an amazonaws.com one."""
    hosts = login(rsps_lenient, region)
    assert all(h.endswith(".amazonaws.com") for h in hosts), hosts


def test_a_real_region_still_logs_in(rsps_lenient: responses.RequestsMock) -> None:
    assert login(rsps_lenient, "eu-central-1") == ["cognito-idp.eu-central-1.amazonaws.com"]
