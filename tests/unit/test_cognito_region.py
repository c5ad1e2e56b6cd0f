"""Review finding: the Cognito endpoint is built from the `region` that `GET /access_info` (the API,
no auth, possibly plain http) answers. A region such as `evil.example/#` made the endpoint
`https://cognito-idp.evil.example/#.amazonaws.com/`, and the worker's USERNAME and PASSWORD were
POSTed there. A region must be an AWS region name; anything else is a bad answer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import responses

from fetcher.api.auth import CognitoLogin
from fetcher.api.http import Http
from fetcher.errors import BadResponse

API = "http://api.test"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


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
    rsps: responses.RequestsMock, region: str
) -> None:
    hosts = login(rsps, region)
    assert all(h.endswith(".amazonaws.com") for h in hosts), hosts


def test_a_real_region_still_logs_in(rsps: responses.RequestsMock) -> None:
    assert login(rsps, "eu-central-1") == ["cognito-idp.eu-central-1.amazonaws.com"]
