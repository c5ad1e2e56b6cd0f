"""Review findings (hostile server): the file request a server hands out was performed as given,
method included, to any URL. A server could make the root daemon DELETE on a service that listens
only on this box, and URLs requests cannot use (file://, no host, a redirect loop) were blamed on
this box's disk (requests' exceptions are OSErrors), so the job was handed back for ever. A
malformed Retry-After raised out of the HTTP helper and stopped every other job's final status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http, Transient
from fetcher.delivery import Deliverer
from fetcher.errors import BadResponse, TransferError
from fetcher.models import JobStatus
from fetcher.store import JobStore
from tests.helpers import download_to

API = "http://api.test"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as r:
        yield r


def make_api(api: str = API) -> WorkerApi:
    return WorkerApi(api, FixedToken("t"), Http(retry_s=0.5, max_backoff_s=0.05))


def offer(rsps: responses.RequestsMock, request: dict[str, Any], api: str = API) -> None:
    rsps.get(f"{api}/files/data/x.bin/url", json={"headers": {}, "data": {}, **request})


@pytest.mark.parametrize("method", ["delete", "PUT", "post", "PATCH", "get\r\nX: y"])
def test_a_download_is_only_ever_a_get(
    rsps: responses.RequestsMock, tmp_path: Path, method: str
) -> None:
    offer(rsps, {"method": method, "url": f"{API}/files/data/x.bin/download"})
    with pytest.raises(TransferError, match=r"request; only GET is made"):
        download_to(make_api(), "data/x.bin", tmp_path / "x")
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
    offer(rsps, {"method": "get", "url": url})
    with pytest.raises(TransferError, match="is not an http"):
        download_to(make_api(), "data/x.bin", tmp_path / "x")


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
        # spellings the resolver reads as loopback (the review's bypasses of a literal check)
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
    offer(rsps, {"method": "get", "url": url})
    with pytest.raises(TransferError, match="points at this box or a link-local address"):
        download_to(make_api(), "data/x.bin", tmp_path / "x")
    assert len(rsps.calls) == 1


def test_nor_through_a_redirect(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    offer(rsps, {"method": "get", "url": "https://bucket.s3.test/x.bin"})
    rsps.get(
        "https://bucket.s3.test/x.bin",
        status=307,
        headers={"Location": "http://127.0.0.1:2375/containers/json"},
    )
    with pytest.raises(TransferError, match="points at this box"):
        download_to(make_api(), "data/x.bin", tmp_path / "x")
    assert [c.request.url for c in rsps.calls][-1] == "https://bucket.s3.test/x.bin"


def test_a_redirect_loop_is_the_jobs_error(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    offer(rsps, {"method": "get", "url": "https://s3.test/a"})
    rsps.get("https://s3.test/a", status=302, headers={"Location": "https://s3.test/b"})
    rsps.get("https://s3.test/b", status=302, headers={"Location": "https://s3.test/a"})
    with pytest.raises(TransferError, match="TooManyRedirects"):
        download_to(make_api(), "data/x.bin", tmp_path / "x")


def test_an_api_on_this_box_may_hand_out_urls_on_this_box(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    local = "http://127.0.0.1:8001"
    offer(rsps, {"method": "get", "url": f"{local}/files/data/x.bin/download"}, api=local)
    rsps.get(f"{local}/files/data/x.bin/download", body=b"ok")
    assert download_to(make_api(local), "data/x.bin", tmp_path / "x") == 2


@pytest.mark.parametrize("value", ["120s", "soon", "Thu, 99 Foo 2026", "nan", "-5", "1e999"])
def test_a_malformed_retry_after_is_ignored(rsps: responses.RequestsMock, value: str) -> None:
    rsps.get(f"{API}/jobs/1/status", status=503, headers={"Retry-After": value})
    http = Http(retry_s=0)
    with pytest.raises(Transient) as caught:
        http.send("GET", f"{API}/jobs/1/status", what="status")
    assert 0 <= caught.value.retry_after_s < 10**6  # finite: "1e999" and "nan" count as none


def test_a_request_requests_refuses_is_a_bad_response(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/x", body=requests.exceptions.InvalidHeader("bad header"))
    with pytest.raises(BadResponse, match="InvalidHeader"):
        Http(retry_s=0).send("GET", f"{API}/x?sig=secret", what="x")


def test_one_odd_answer_does_not_hold_back_every_other_final_status(tmp_path: Path) -> None:
    class Api:
        def __init__(self) -> None:
            self.put: list[str] = []

        def get_status(self, job_id: str, **_: Any) -> JobStatus:
            if job_id == "1":
                raise ValueError("an answer nobody expected")
            return JobStatus.running

        def put_status(self, job_id: str, status: JobStatus, details: str, **_: Any) -> None:
            if job_id == "1":
                raise ValueError("an answer nobody expected")
            self.put.append(job_id)

    store = JobStore(tmp_path / "jobs.sqlite")
    api = Api()
    deliverer = Deliverer(store, api)  # type: ignore[arg-type]
    for job_id in ("1", "2"):
        store.claimed(job_id, {}, name=None, cpu_cores=1, memory_mb=1, gpus=[])
        deliverer.submit(job_id, JobStatus.finished, "exit_code: 0", verify=True)
    deliverer.deliver_due()
    assert api.put == ["2"]
    assert set(deliverer.pending()) == {"1"}


def test_urls_in_error_texts_lose_user_info_query_and_fragment() -> None:
    from fetcher.logs import safe_url, shown_url

    url = "https://user:pw@s3.test:9000/b/k?X-Amz-Signature=s3cret#frag"
    assert safe_url(url) == "https://s3.test:9000/b/k"
    assert shown_url(url) == "'https://s3.test:9000/b/k'"


def test_a_name_that_resolves_to_this_box_only_when_connecting_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review finding: the target was judged by resolving its name before the request, and
    # requests resolves again to connect (DNS rebinding: public when checked, 127.0.0.1 when
    # used). Each new connection of a file request has its peer checked as well.
    import http.server
    import json
    import threading

    from fetcher.api import files as files_module
    from fetcher.api.http import new_session
    from fetcher.api.peers import checked_adapter

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            return

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path.endswith("/url"):
                body = json.dumps(
                    {"method": "get", "url": f"{base}/secret", "headers": {}, "data": {}}
                ).encode()
            else:
                body = b"loopback-only secret"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = make_api(base)
        # as if the API were elsewhere, and the file URL's name had looked public when checked
        api.files._local_api = False
        api.files._file_session = new_session(checked_adapter())
        monkeypatch.setattr(files_module, "is_local_host", lambda *_: False)
        with pytest.raises(TransferError, match=r"connected to 127\.0\.0\.1, this box"):
            download_to(api, "data/x.bin", tmp_path / "x")
    finally:
        server.shutdown()
        server.server_close()
    assert hits and all(h.endswith("/url") for h in hits), hits  # the secret was never asked for
