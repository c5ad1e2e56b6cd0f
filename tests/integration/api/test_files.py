"""A hostile server's file requests, on a real engine: another scheme, a method other than GET to
a service on this box's loopback, a download that trickles after the job is deleted, a redirect
elsewhere, a redirect loop or a Retry-After that is no number: each ends the job honestly, carries
no token elsewhere and never reaches the loopback service."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    TOKEN,
    HostileServer,
    Route,
    deep_base,
    hostile_job,
    hostile_settings,
    run_until_idle,
)

pytestmark = pytest.mark.docker


def file_url_answer(req: dict[str, Any]) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.answer(200, json.dumps(req).encode())  # type: ignore[attr-defined]

    return route


@pytest.mark.parametrize(
    "url", ["file://{tmp}/canary.txt", "ftp://127.0.0.1/x", "gopher://x", "http:///nohost"]
)
def test_a_download_url_of_another_scheme_is_the_jobs_error_not_a_worker_fault(
    tmp_path: Path, engine: Any, url: str
) -> None:
    base = deep_base(tmp_path)
    (tmp_path / "canary.txt").write_text("canary")
    req = {"method": "GET", "url": url.replace("{tmp}", str(tmp_path)), "headers": {}}
    claims = [json.dumps({"7": hostile_job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, {("GET", "/files/"): file_url_answer(req)}) as server:
        run_until_idle(hostile_settings(server.url, base), engine, timeout_s=60)
        final = server.reports_of("7")[-1]
    assert (tmp_path / "canary.txt").read_text() == "canary"
    # a server's bad answer is not this worker's trouble: the job's error, naming the input
    assert final[0] == "error", final
    assert final[1].startswith("input in/x.bin: "), final


def test_a_server_cannot_make_the_root_fetcher_send_any_method_to_a_localhost_service(
    tmp_path: Path, engine: Any
) -> None:
    """SSRF: a download request naming another method, here a DELETE to a service that listens on
    the host's loopback only (a Docker API on tcp://127.0.0.1:2375, a registry, an admin
    endpoint), is never performed: the job ends `error` ("only GET is made"), and a canary server
    of the test's own, standing in for that service, receives nothing."""
    base = deep_base(tmp_path)
    seen: list[tuple[str, str]] = []

    def canary(h: BaseHTTPRequestHandler) -> None:
        seen.append((h.command, h.path))
        h.answer(200, b"secret-from-localhost-only-service")  # type: ignore[attr-defined]

    with HostileServer([], {("DELETE", "/"): canary, ("GET", "/"): canary}) as local:
        req = {
            "method": "DELETE",
            "url": f"{local.url}/v1.43/containers/victim?force=1",
            "headers": {},
        }
        claims = [
            json.dumps(
                {"7": hostile_job("cat /files/in/x.bin; exit 3", files_down={"in/x.bin": "fid1"})}
            ).encode()
        ]
        with HostileServer(claims, {("GET", "/files/"): file_url_answer(req)}) as server:
            run_until_idle(hostile_settings(server.url, base), engine, timeout_s=60)
            final = server.reports_of("7")[-1]
    # the job would read what the loopback-only service answered (in its log tail): it gets nothing
    assert final[0] == "error" and "only GET is made" in final[1], final
    assert "secret-from-localhost-only-service" not in final[1]
    assert seen == [], f"the fetcher sent {seen} to a loopback service on the server's word"


def trickle(h: BaseHTTPRequestHandler) -> None:
    """A download that never ends: a header promising 100 MB, then a byte every 0.5 s."""
    h.send_response(200)
    h.send_header("Content-Length", str(100 * 2**20))
    h.end_headers()
    try:
        for _ in range(10_000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.5)
    except OSError:
        return


def test_a_trickling_download_stops_when_the_user_deletes_the_job(
    tmp_path: Path, engine: Any
) -> None:
    """A download that sends a byte now and then never hits the read timeout. When the user deletes
    the job (status PUT 404), the slot must be freed within a few keep-alive intervals."""
    base = deep_base(tmp_path)
    deleted_at: list[float] = []
    started = time.monotonic()

    def put(h: BaseHTTPRequestHandler) -> None:
        if time.monotonic() - started > 4:
            deleted_at.append(time.monotonic())
            h.answer(404, b'{"detail":"Not Found"}')  # type: ignore[attr-defined]
        else:
            h.answer(204)  # type: ignore[attr-defined]

    routes: dict[tuple[str, str], Route] = {("PUT", "/jobs/"): put, ("GET", "/slow"): trickle}
    claims = [json.dumps({"7": hostile_job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, routes) as server:
        req = {"method": "GET", "url": "http://127.0.0.2:1/unused", "headers": {}}
        req["url"] = f"{server.url}/slow"
        server.routes[("GET", "/files/")] = file_url_answer(req)
        # (the hang guard: a slot still held 30 s after the start, 26 s after the deletion, fails)
        run_until_idle(hostile_settings(server.url, base), engine, timeout_s=30)
    assert deleted_at, "the server never said the job is gone"


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_from_the_apis_own_download_url_carries_no_token_elsewhere(
    tmp_path: Path, engine: Any, code: int
) -> None:
    base = deep_base(tmp_path)
    seen: list[dict[str, str]] = []

    def elsewhere(h: BaseHTTPRequestHandler) -> None:
        seen.append({k.lower(): v for k, v in h.headers.items()})
        h.answer(200, b"data")  # type: ignore[attr-defined]

    with HostileServer([], {("GET", "/"): elsewhere}) as other:
        other_url = other.url.replace("127.0.0.1", "localhost")  # another host name, same box

        def redirect(h: BaseHTTPRequestHandler) -> None:
            h.answer(code, b"", {"Location": f"{other_url}/x"})  # type: ignore[attr-defined]

        claims = [json.dumps({"7": hostile_job(files_down={"in/x.bin": "fid1"})}).encode()]
        with HostileServer(claims, {("GET", "/dl"): redirect}) as server:
            req = {
                "method": "GET",
                "url": f"{server.url}/dl/x",
                "headers": {"authorization": "Bearer echoed"},
            }
            server.routes[("GET", "/files/")] = file_url_answer(req)
            run_until_idle(hostile_settings(server.url, base), engine, timeout_s=60)
            final = server.reports_of("7")[-1]
    assert seen, final
    assert all(TOKEN not in json.dumps(h) for h in seen), seen


@pytest.mark.parametrize(
    "trouble",
    ["redirect-loop", "bad-retry-after"],
)
def test_an_odd_answer_to_a_download_is_not_a_fetcher_internal_error(
    tmp_path: Path, engine: Any, trouble: str
) -> None:
    base = deep_base(tmp_path)

    def dl(h: BaseHTTPRequestHandler) -> None:
        if trouble == "redirect-loop":
            h.answer(302, b"", {"Location": "/dl/again"})  # type: ignore[attr-defined]
        else:
            h.answer(503, b"{}", {"Retry-After": "120s"})  # type: ignore[attr-defined]

    claims = [json.dumps({"7": hostile_job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, {("GET", "/dl"): dl}) as server:
        req = {"method": "GET", "url": f"{server.url}/dl/x", "headers": {}}
        server.routes[("GET", "/files/")] = file_url_answer(req)
        run_until_idle(hostile_settings(server.url, base), engine, timeout_s=60)
        final = server.reports_of("7")[-1]
    assert "internal error" not in final[1], final
    if trouble == "redirect-loop":  # the server's bad answer: the job's error, not this box's fault
        assert final[0] == "error" and "TooManyRedirects" in final[1], final
    else:  # a server that stays busy: handed back with what it said, as any outage
        assert final[0] == "queued" and "HTTP 503" in final[1], final
