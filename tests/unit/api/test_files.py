"""FileRequests against `responses` and servers of the test's own: files move through the
request the API hands out, performed only as a GET (downloads), only to an http(s) URL off this box,
with the bearer token for the API's own origin only; broken downloads start again, a cancelled one
stops soon, and what fails is the job's error or an outage, never this box's disk."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import ApiUnavailable, Interrupted, TransferError
from fetcher.models import FileHTTPRequest, UploadType
from tests.helpers import (
    API,
    BEARER,
    authorizations,
    download_to,
    serving,
    trickle,
    upload_from,
    worker_api,
)


# --- downloads ---------------------------------------------------------------------------------
def test_download_follows_the_api_url_with_bearer_streamed(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(
        f"{API}/files/data/u/a.yaml/url",
        json={
            "method": "get",
            "url": f"{API}/files/data/u/a.yaml/download",
            "headers": {},
            "data": {},
        },
    )
    rsps.get(f"{API}/files/data/u/a.yaml/download", body=b"x" * 3_000_000)
    size = download_to(worker_api(), "data/u/a.yaml", tmp_path / "a.yaml")
    assert size == 3_000_000 and (tmp_path / "a.yaml").stat().st_size == 3_000_000
    assert rsps.calls[1].request.headers["Authorization"] == BEARER


def test_download_of_presigned_s3_url_sends_no_bearer(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.amazonaws.com/u/calib.bin?X-Amz-Signature=abc"
    rsps.get(
        f"{API}/files/s3://bucket/u/calib.bin/url",
        json={"method": "get", "url": s3, "headers": {"x-amz-meta": "1"}, "data": {}},
    )
    rsps.get(s3, body=b"calib")
    download_to(worker_api(), "s3://bucket/u/calib.bin", tmp_path / "c.bin")
    assert "Authorization" not in rsps.calls[1].request.headers
    assert rsps.calls[1].request.headers["x-amz-meta"] == "1"
    assert (tmp_path / "c.bin").read_bytes() == b"calib"


def test_download_of_missing_file_is_a_transfer_error(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(f"{API}/files/data/nope/url", status=404, json={"detail": "File not found"})
    with pytest.raises(TransferError, match="404"):
        download_to(worker_api(), "data/nope", tmp_path / "x")


def test_download_refuses_dotdot_file_ids(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=r"\.\."):
        download_to(worker_api(), "data/../../etc/passwd", tmp_path / "x")


def test_broken_download_starts_again(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    url = {"method": "get", "url": f"{API}/dl", "headers": {}, "data": {}}
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=requests.ConnectionError("reset"))
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=b"complete")
    download_to(worker_api(), "f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"complete"


def test_a_gzip_encoded_download_is_stored_as_sent(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    import gzip

    payload = gzip.compress(b"calibration " * 1000)
    rsps.get(
        f"{API}/files/f.mat.gz/url",
        json={"method": "get", "url": f"{API}/dl/f", "headers": {}, "data": {}},
    )
    rsps.get(
        f"{API}/dl/f",
        body=payload,
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(payload))},
        auto_calculate_content_length=False,
    )
    size = download_to(worker_api(), "f.mat.gz", tmp_path / "f.mat.gz")
    assert size == len(payload) and (tmp_path / "f.mat.gz").read_bytes() == payload


def test_a_short_download_is_started_again(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    url = {"method": "get", "url": f"{API}/dl", "headers": {}, "data": {}}
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(
        f"{API}/dl",
        body=b"part",
        headers={"Content-Length": "10"},
        auto_calculate_content_length=False,
    )
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=b"0123456789")
    download_to(worker_api(), "f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_a_file_the_api_fails_to_send_is_a_transfer_error_after_a_few_tries(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    # Given a file id the server lists but cannot send (a directory: 200 on /url, 500 on download)
    url = {"method": "get", "url": f"{API}/files/d/download", "headers": {}, "data": {}}
    for _ in range(3):
        rsps.get(f"{API}/files/d/url", json=url)
        rsps.get(f"{API}/files/d/download", status=500, body="Internal Server Error")
    # Then it is the input's problem after three tries, not an outage to ride out for 15 minutes
    with pytest.raises(TransferError, match="fails to send this file"):
        download_to(worker_api(retry_s=60), "d", tmp_path / "d")
    assert len(rsps.calls) == 6


def test_an_s3_500_is_retried_as_a_transient_failure(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.test/k?X-Amz-Signature=sig"
    url = {"method": "get", "url": s3, "headers": {}, "data": {}}
    for _ in range(4):
        rsps.get(f"{API}/files/k/url", json=url)
        rsps.get(s3, status=500, body="InternalError")
    rsps.get(f"{API}/files/k/url", json=url)
    rsps.get(s3, body=b"finally")
    download_to(worker_api(retry_s=60), "k", tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == b"finally"


def test_error_messages_do_not_carry_presigned_query_strings(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.test/k?X-Amz-Signature=topsecretsig"
    rsps.get(f"{API}/files/k/url", json={"method": "get", "url": s3, "headers": {}, "data": {}})
    rsps.get(s3, body=requests.ConnectionError("boom"))
    with pytest.raises(ApiUnavailable) as info:
        download_to(worker_api(retry_s=0.2), "k", tmp_path / "k")
    assert "topsecretsig" not in str(info.value)


@pytest.fixture
def trickling_file() -> Iterator[str]:
    """An API whose download URL sends 1 MB of headers-promised body one byte every 0.05 s."""
    base: list[str] = []

    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        if b"/url " in request.split(b"\r\n", 1)[0]:
            body = json.dumps(
                {"method": "get", "url": f"{base[0]}/slow", "headers": {}, "data": {}}
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
        trickle(conn, 0.05, stop)

    with serving(answer) as url:
        base.append(url)
        yield url


def test_a_trickling_download_stops_soon_after_the_job_is_cancelled(
    trickling_file: str, tmp_path: Path
) -> None:
    """A download reads whatever has arrived, not whole 1 MB chunks: a body trickling in (each
    byte well within the read timeout; a chunk would take 14 hours here) stops within 2 s of the
    cancel."""
    api = WorkerApi(trickling_file, FixedToken("t"), Http(retry_s=0, read_timeout_s=5.0))
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def download() -> None:
        with (tmp_path / "in.bin").open("wb") as out:
            try:
                outcome["result"] = api.files.download_file("data/x.bin", out, interrupt=cancel)
            except Exception as exc:
                outcome["result"] = exc

    t = threading.Thread(target=download, daemon=True)
    t.start()
    time.sleep(1.0)
    cancel.set()
    cancelled = time.monotonic()
    t.join(8)
    assert not t.is_alive(), "still downloading 8 s after the cancel"
    assert time.monotonic() - cancelled < 2
    assert isinstance(outcome["result"], Interrupted), outcome


# --- uploads -----------------------------------------------------------------------------------
def test_upload_is_multipart_with_data_first_then_file_and_always_sends_base_path(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.post(
        f"{API}/jobs/17/files/url",
        status=201,
        match=[matchers.query_param_matcher({"type": "output", "base_path": ""})],
        json={
            "method": "post",
            "url": "https://s3.test/bucket",
            "headers": {},
            "data": {"key": "out/${filename}", "policy": "p0l1cy"},
        },
    )
    sent: list[bytes] = []

    def receive(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = request.body  # streamed: read it while the file is open
        assert body is not None and not isinstance(body, (str, bytes))
        sent.append(b"".join(bytes(block) for block in body))
        assert int(request.headers["Content-Length"]) == len(sent[0])
        return 204, {}, ""

    rsps.add_callback(responses.POST, "https://s3.test/bucket", callback=receive)
    f = tmp_path / "result.h5"
    f.write_bytes(b"RESULT")
    upload_from(worker_api(), "17", f, UploadType.output, "")
    text = sent[0].decode()
    assert (
        text.index('name="key"')
        < text.index('name="policy"')
        < text.index('name="file"; filename="result.h5"')
    )
    assert "RESULT" in text
    assert "Authorization" not in rsps.calls[1].request.headers


def test_upload_sends_sub_path_as_base_path(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    rsps.post(
        f"{API}/jobs/17/files/url",
        status=201,
        match=[matchers.query_param_matcher({"type": "log", "base_path": "a/b"})],
        json={"method": "post", "url": f"{API}/up", "headers": {}, "data": {}},
    )
    rsps.post(f"{API}/up", status=201, body="null")
    f = tmp_path / "x.log"
    f.write_text("log")
    upload_from(worker_api(), "17", f, UploadType.log, "a/b")
    assert rsps.calls[1].request.headers["Authorization"] == BEARER


@pytest.mark.parametrize("base_path", ["/abs", "a/../../x", ".."])
def test_upload_refuses_unsafe_base_paths(tmp_path: Path, base_path: str) -> None:
    f = tmp_path / "x"
    f.write_text("x")
    with pytest.raises(ValueError, match="relative"):
        upload_from(worker_api(), "1", f, UploadType.output, base_path)


def test_upload_of_a_job_not_ours_gives_up_as_unavailable_500(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.post(f"{API}/jobs/9/files/url", status=500, body="Internal Server Error")
    f = tmp_path / "x"
    f.write_text("x")
    with pytest.raises(ApiUnavailable):
        upload_from(worker_api(retry_s=0.3), "9", f, UploadType.output, "")


# --- what a server's file request may make the daemon do ---------------------------------------
def offer(rsps: responses.RequestsMock, request: dict[str, Any], api: str = API) -> None:
    rsps.get(f"{api}/files/data/x.bin/url", json={"headers": {}, "data": {}, **request})


@pytest.mark.parametrize("method", ["delete", "PUT", "post", "PATCH", "get\r\nX: y"])
def test_a_download_is_only_ever_a_get(
    rsps: responses.RequestsMock, tmp_path: Path, method: str
) -> None:
    """The file request a server hands out is performed only as a GET, whatever method it names: a
    server cannot make the root daemon DELETE on a service that listens only on this box."""
    offer(rsps, {"method": method, "url": f"{API}/files/data/x.bin/download"})
    with pytest.raises(TransferError, match=r"request; only GET is made"):
        download_to(worker_api(token="t", retry_s=0.5), "data/x.bin", tmp_path / "x")
    assert [c.request.method for c in rsps.calls] == ["GET"]  # the API's answer only


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://host/x",
        "gopher://x",
        "http:///nohost",
        "http://",
        "javascript:alert(1)",
    ],
)
def test_a_url_requests_cannot_use_is_the_jobs_error_not_this_box(
    rsps: responses.RequestsMock, tmp_path: Path, url: str
) -> None:
    """A URL requests cannot use (file://, another scheme, no host) is the job's error, not blamed
    on this box's disk (requests' exceptions are OSErrors), which would hand the job back for ever.
    """
    offer(rsps, {"method": "get", "url": url})
    with pytest.raises(TransferError, match="is not an http"):
        download_to(worker_api(token="t", retry_s=0.5), "data/x.bin", tmp_path / "x")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2375/v1.43/containers/json",
        "http://localhost/admin",
        "http://[::1]:5000/v2/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:9090/",
        "http://[::ffff:127.0.0.1]/",
        "http://LOCALHOST./x",
        # spellings the resolver reads as loopback (each would pass a check of the literal host)
        "http://127.1:2375/",
        "http://2130706433:2375/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://0/",
        "http://[fd00:ec2::254]/latest/",
    ],
)
def test_a_server_elsewhere_cannot_send_the_daemon_to_this_box(
    rsps: responses.RequestsMock, tmp_path: Path, url: str
) -> None:
    """A server elsewhere cannot send the daemon to this box or a link-local address, however the
    URL spells it (including the spellings the resolver reads as loopback): the job's error, and no
    request is made."""
    offer(rsps, {"method": "get", "url": url})
    with pytest.raises(TransferError, match="points at this box or a link-local address"):
        download_to(worker_api(token="t", retry_s=0.5), "data/x.bin", tmp_path / "x")
    assert len(rsps.calls) == 1


def test_a_redirect_cannot_send_the_daemon_to_this_box_either(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    offer(rsps, {"method": "get", "url": "https://bucket.s3.test/x.bin"})
    rsps.get(
        "https://bucket.s3.test/x.bin",
        status=307,
        headers={"Location": "http://127.0.0.1:2375/containers/json"},
    )
    with pytest.raises(TransferError, match="points at this box"):
        download_to(worker_api(token="t", retry_s=0.5), "data/x.bin", tmp_path / "x")
    assert [c.request.url for c in rsps.calls][-1] == "https://bucket.s3.test/x.bin"


def test_the_apis_file_request_answer_cannot_be_redirected_to_this_box_either(
    rsps_lenient: responses.RequestsMock, tmp_path: Path
) -> None:
    meta = "http://169.254.169.254/latest/meta-data/"
    rsps_lenient.get(
        "https://api.example/files/data/x.bin/url", status=302, headers={"Location": meta}
    )
    rsps_lenient.get(meta, json={"method": "get", "url": "https://s3.test/x", "headers": {}})
    with pytest.raises(TransferError, match="link-local address; refused"):
        download_to(worker_api("https://api.example", retry_s=0.5), "data/x.bin", tmp_path / "x")
    assert len(rsps_lenient.calls) == 1


def test_a_redirect_loop_is_the_jobs_error(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    """A redirect loop is the job's error (TooManyRedirects), not this box's trouble."""
    offer(rsps, {"method": "get", "url": "https://s3.test/a"})
    rsps.get("https://s3.test/a", status=302, headers={"Location": "https://s3.test/b"})
    rsps.get("https://s3.test/b", status=302, headers={"Location": "https://s3.test/a"})
    with pytest.raises(TransferError, match="TooManyRedirects"):
        download_to(worker_api(token="t", retry_s=0.5), "data/x.bin", tmp_path / "x")


def test_an_api_on_this_box_may_hand_out_urls_on_this_box(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    local = "http://127.0.0.1:8001"
    offer(rsps, {"method": "get", "url": f"{local}/files/data/x.bin/download"}, api=local)
    rsps.get(f"{local}/files/data/x.bin/download", body=b"ok")
    assert download_to(worker_api(local, token="t", retry_s=0.5), "data/x.bin", tmp_path / "x") == 2


# --- the bearer token reaches the API however API_URL is spelled, and no other origin -----------
# API_URL as a user writes it, how requests sends it, and the download URL the server builds back
API_HTTPS = "https://api.example"
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
    download_to(worker_api(api_url, retry_s=1.0), "f", tmp_path / "f")
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
    download_to(worker_api("http://127.0.0.1:80/", retry_s=1.0), "f", tmp_path / "f")
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
    download_to(worker_api("http://127.0.0.1:80", retry_s=1.0), "f", tmp_path / "f")
    assert authorizations(rsps.calls[1]) == [BEARER]
    assert rsps.calls[1].request.headers["x-extra"] == "kept"


ECHOED_ELSEWHERE = [
    "https://files.other.example/f",  # another host
    "https://bucket.s3.amazonaws.com/u/f?X-Amz-Signature=abc",
    "http://api.example:8080/f",  # the API's host, another port, in clear
    "https://api.example:8443/f",  # the API's host, another port
]


@pytest.mark.parametrize("download_url", ECHOED_ELSEWHERE)
def test_an_echoed_authorization_is_never_forwarded_to_another_origin(
    rsps: responses.RequestsMock, tmp_path: Path, download_url: str
) -> None:
    # Given a server that echoes the caller's authorization header into a URL elsewhere
    rsps.get(
        f"{API_HTTPS}/files/f/url",
        json={
            "method": "get",
            "url": download_url,
            "headers": {"Authorization": BEARER, "x-amz-meta": "1"},
            "data": {},
        },
    )
    rsps.get(download_url, body=b"x")
    download_to(worker_api(API_HTTPS), "f", tmp_path / "f")
    # Then the token stays home; the other headers go as given
    assert authorizations(rsps.calls[1]) == [], "bearer token forwarded to another origin"
    assert rsps.calls[1].request.headers["x-amz-meta"] == "1"


@pytest.mark.parametrize(
    ("api_url", "handed_out", "fetched"),
    [
        (
            API_HTTPS,
            "http://api.example/files/d/a.yaml/download",
            f"{API_HTTPS}/files/d/a.yaml/download",
        ),
        (
            "https://api.example:8443",
            "http://api.example:8443/files/d/a.yaml/download?x=1",
            "https://api.example:8443/files/d/a.yaml/download?x=1",
        ),
    ],
)
def test_a_plain_http_url_of_the_apis_own_host_is_fetched_over_https_with_the_token(
    rsps_lenient: responses.RequestsMock,
    tmp_path: Path,
    api_url: str,
    handed_out: str,
    fetched: str,
) -> None:
    # Given the real server behind a TLS-terminating proxy: it builds its download URL from the
    # Host header and its own (plain http) scheme, and echoes the caller's authorization header
    rsps = rsps_lenient
    rsps.get(
        f"{api_url}/files/d/a.yaml/url",
        json={"method": "get", "url": handed_out, "headers": {"authorization": BEARER}, "data": {}},
    )
    rsps.get(handed_out, body=b"x")
    rsps.get(fetched, body=b"x")
    # When the file is downloaded
    download_to(worker_api(api_url), "d/a.yaml", tmp_path / "a")
    # Then the token never went over plain http: the file came from API_URL's own origin, over
    # TLS, with the token (the route wants it)
    in_clear = [c.request.url for c in rsps.calls if str(c.request.url).startswith("http:")]
    assert in_clear == [], "a request (with the bearer token) went over plain http"
    assert [c.request.url for c in rsps.calls][1] == fetched
    assert authorizations(rsps.calls[1]) == [BEARER]


def test_a_plain_http_upload_url_of_the_apis_own_host_is_posted_over_https(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    upload = "/jobs/17/files/upload?type=output&base_path=out"
    rsps.post(
        f"{API_HTTPS}/jobs/17/files/url",
        status=201,
        json={"method": "post", "url": f"http://api.example{upload}", "headers": {}, "data": {}},
    )
    rsps.post(f"{API_HTTPS}{upload}", status=201, body="null")
    f = tmp_path / "r.txt"
    f.write_text("r")
    upload_from(worker_api(API_HTTPS), "17", f, UploadType.output, "out")
    assert authorizations(rsps.calls[1]) == [BEARER]


def test_headers_for_the_own_origin_hold_exactly_one_authorization() -> None:
    api = worker_api("HTTP://LOCALHOST:80/", retry_s=1.0)
    req = FileHTTPRequest(
        method="get",
        url="http://localhost/files/f/download",
        headers={"authorization": "Bearer old", "AUTHORIZATION": "Bearer older", "x": "1"},
    )
    headers = api.files._headers_for(req)
    assert [k for k in headers if k.lower() == "authorization"] == ["Authorization"]
    assert headers == {"x": "1", "Authorization": BEARER}


def test_a_foreign_requests_headers_are_kept_as_given_but_any_authorization() -> None:
    api = worker_api("http://127.0.0.1:80", retry_s=1.0)
    req = FileHTTPRequest(
        method="get",
        url="https://s3.test/b/k",
        headers={"x-amz-acl": "p", "AuthoriZation": BEARER},
    )
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
    upload_from(worker_api("http://127.0.0.1:80", retry_s=1.0), "17", f, UploadType.output, "out")
    assert authorizations(rsps.calls[1]) == [BEARER]
