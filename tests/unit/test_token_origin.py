"""The bearer token reaches the API however API_URL is spelled, and no other origin (issue 8, point 6).

The server builds its download and upload URLs from the Host header the client sent, so they are
spelled differently from API_URL (`http://127.0.0.1:80` → `http://127.0.0.1/...`). Against
`responses`, as tests/unit/test_client.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import responses

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.api.peers import origin
from fetcher.models import FileHTTPRequest, UploadType
from tests.helpers import download_to, upload_from

TOKEN = "fixed-token-0123456789"
BEARER = f"Bearer {TOKEN}"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as r:
        yield r


def make_api(api_url: str, token: str = TOKEN) -> WorkerApi:
    return WorkerApi(api_url, FixedToken(token), Http(retry_s=1.0, max_backoff_s=0.05))


def authorizations(call: responses.Call) -> list[str]:
    """Every Authorization header of a request, whatever its case."""
    return [v for k, v in call.request.headers.items() if k.lower() == "authorization"]


# API_URL as a user writes it, how requests sends it, and the download URL the server builds back
SAME_ORIGIN = [
    ("http://127.0.0.1:80", "http://127.0.0.1:80", "http://127.0.0.1/files/f/download"),
    (
        "HTTPS://API.EXAMPLE.ORG:443/",
        "https://api.example.org:443",
        "https://api.example.org/files/f/download",
    ),
    ("https://api.example.org", "https://api.example.org", "https://api.example.org:443/dl"),
    ("http://api.test/", "http://api.test", "http://api.test/files/f/download"),
    ("http://api.test:8001", "http://api.test:8001", "http://API.TEST:8001/files/f/download"),
    ("http://[::1]:80", "http://[::1]:80", "http://[0:0::1]/files/f/download"),
]


@pytest.mark.parametrize(("api_url", "sent_to", "download_url"), SAME_ORIGIN)
def test_the_token_goes_to_the_apis_own_download_url_however_api_url_is_spelled(
    rsps: responses.RequestsMock, tmp_path: Path, api_url: str, sent_to: str, download_url: str
) -> None:
    # Given a server that answers with its own URL and no header (as one that does not echo)
    rsps.get(
        f"{sent_to}/files/f/url",
        json={"method": "get", "url": download_url, "headers": {}, "data": {}},
    )
    rsps.get(download_url, body=b"data")
    # When the file is downloaded
    download_to(make_api(api_url), "f", tmp_path / "f")
    # Then the download carried the bearer token
    assert authorizations(rsps.calls[1]) == [BEARER]
    assert (tmp_path / "f").read_bytes() == b"data"


FOREIGN = [
    "https://bucket.s3.amazonaws.com/u/f?X-Amz-Signature=abc",
    "http://127.0.0.1:8080/files/f/download",  # another port
    "https://127.0.0.1/files/f/download",  # another scheme
    "http://127.0.0.1.evil.example/files/f/download",
    "http://127.0.0.1@evil.example/files/f/download",  # user info, then another host
    "http://[::2]/files/f/download",
]


@pytest.mark.parametrize("download_url", FOREIGN)
def test_the_token_never_goes_to_another_origin(
    rsps: responses.RequestsMock, tmp_path: Path, download_url: str
) -> None:
    rsps.get(
        "http://127.0.0.1:80/files/f/url",
        json={"method": "get", "url": download_url, "headers": {"x-amz-meta": "1"}, "data": {}},
    )
    rsps.get(download_url, body=b"data")
    download_to(make_api("http://127.0.0.1:80/"), "f", tmp_path / "f")
    assert authorizations(rsps.calls[1]) == []
    assert rsps.calls[1].request.headers["x-amz-meta"] == "1"


@pytest.mark.parametrize("echoed_name", ["authorization", "Authorization", "AUTHORIZATION"])
def test_an_echoed_authorization_is_replaced_by_ours_never_sent_twice(
    rsps: responses.RequestsMock, tmp_path: Path, echoed_name: str
) -> None:
    # Given a server that echoes an older token (ours was refreshed since)
    rsps.get(
        "http://127.0.0.1:80/files/f/url",
        json={
            "method": "get",
            "url": "http://127.0.0.1/files/f/download",
            "headers": {echoed_name: "Bearer stale-token-000", "x-extra": "kept"},
            "data": {},
        },
    )
    rsps.get("http://127.0.0.1/files/f/download", body=b"data")
    download_to(make_api("http://127.0.0.1:80"), "f", tmp_path / "f")
    assert authorizations(rsps.calls[1]) == [BEARER]
    assert rsps.calls[1].request.headers["x-extra"] == "kept"


def test_headers_for_the_own_origin_hold_exactly_one_authorization() -> None:
    api = make_api("HTTP://LOCALHOST:80/")
    req = FileHTTPRequest(
        method="get",
        url="http://localhost/files/f/download",
        headers={"authorization": "Bearer old", "AUTHORIZATION": "Bearer older", "x": "1"},
    )
    headers = api.files._headers_for(req)
    assert [k for k in headers if k.lower() == "authorization"] == ["Authorization"]
    assert headers == {"x": "1", "Authorization": BEARER}


def test_a_foreign_requests_headers_are_kept_as_given() -> None:
    api = make_api("http://127.0.0.1:80")
    req = FileHTTPRequest(method="get", url="https://s3.test/b/k", headers={"x-amz-acl": "p"})
    assert api.files._headers_for(req) == {"x-amz-acl": "p"}


def test_the_upload_to_the_apis_own_route_carries_one_bearer(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    # Given API_URL with the default port, and the server's own upload route echoing our header
    upload = "http://127.0.0.1/jobs/17/files/upload?type=output&base_path=out"
    rsps.post(
        "http://127.0.0.1:80/jobs/17/files/url",
        status=201,
        json={"method": "post", "url": upload, "headers": {"authorization": BEARER}, "data": {}},
    )
    rsps.post(upload, status=201, body="null")
    f = tmp_path / "r.txt"
    f.write_text("r")
    upload_from(make_api("http://127.0.0.1:80"), "17", f, UploadType.output, "out")
    assert authorizations(rsps.calls[1]) == [BEARER]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:80", ("http", "127.0.0.1", 80)),
        ("http://127.0.0.1/files/x", ("http", "127.0.0.1", 80)),
        ("HTTPS://API.EXAMPLE.ORG:443/", ("https", "api.example.org", 443)),
        ("https://api.example.org./a?b=c", ("https", "api.example.org", 443)),
        ("http://[::1]:80/", ("http", "::1", 80)),
        ("http://[0:0:0::1]:8001", ("http", "::1", 8001)),
        ("https://user:pw@Host:8001/x", ("https", "host", 8001)),
        (" http://h/ ", ("http", "h", 80)),
        ("http://h:notaport/", None),
        ("http://h:99999/", None),
        ("ftp://h/", None),
        ("/relative/path", None),
        ("http:///nohost", None),
    ],
)
def test_origin_normalises_every_spelling(url: str, expected: object) -> None:
    assert origin(url) == expected
