"""More hostile jobs and servers (a review's probes): names that are not UTF-8, file requests a
server should not be able to make the daemon perform, trickling downloads, malformed Retry-After,
odd env and image references, a claim of 1000 jobs, output directories swapped for links, jobs
that leave processes or lock their files.

Every path here lives in the test's own tmp_path; every URL points at a server of the test's own on
127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fetcher.daemon import build_daemon
from fetcher.settings import Settings
from tests.helpers import IMAGE, TOKEN, Env, fetcher_id
from tests.helpers.hostile import HostileServer, Route

pytestmark = pytest.mark.docker


def job(cmd: str = "true", **handler: Any) -> dict[str, Any]:
    return {
        "app": {"cmd": [cmd], "env": None},
        "handler": {"image_url": IMAGE, "files_down": None, "files_up": None, **handler},
        "meta": {"job_id": 1},
        "hardware": {"cpu_cores": 1, "memory": 64},
    }


def settings(url: str, base: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "api_url": url,
        "access_token": TOKEN,
        "path_base": base,
        "poll_interval_s": 0.05,
        "keepalive_interval_s": 1.0,
        "api_retry_s": 2.0,
        "fetcher_id": fetcher_id(),
        "shm_size": "64m",
        "job_default_memory_mb": 64,
        "stop_grace_s": 1.0,
    }
    values.update(kw)
    return Settings(_env_file=None, **values)


def run_daemon(
    url: str, base: Path, engine: Any, timeout_s: float = 60, **kw: Any
) -> tuple[bool, Any]:
    """Run the daemon until idle; (ended in time, daemon). A hung daemon is force-stopped."""
    daemon = build_daemon(settings(url, base, **kw), exit_when_idle=True, docker_client=engine)
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    t.join(timeout_s)
    ended = not t.is_alive()
    if not ended:
        daemon.worker.request_force_stop()
        t.join(60)
    return ended, daemon


def make_base(tmp_path: Path) -> Path:
    base = tmp_path / "deep" / "er" / "base"
    base.mkdir(parents=True)
    return base


# --- a hostile job ----------------------------------------------------------------------------


def test_a_job_output_file_whose_name_is_not_utf8_ends_the_job_honestly(
    env: Env, engine: Any
) -> None:
    """A file name with a byte that is not UTF-8 (legal on Linux) in a sub-directory of an output
    directory. Expected: skipped (or the job's `error`); never a hand-back of a job that is at fault."""
    from tests.integration.test_sandbox import run_bounded

    j = env.submit(
        [
            "mkdir -p /files/output/sub && echo x > \"$(printf '/files/output/sub/a\\377b')\""
            " && echo ok > /files/output/fine.txt"
        ]
    )
    assert run_bounded(env, engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "finished", (j.status.value, details[:300])
    uploaded = {(u["base_path"], u["filename"]) for u in j.uploads}
    assert ("output", "fine.txt") in uploaded
    assert not any("sub" in base for base, _ in uploaded)


def test_a_job_output_file_whose_name_is_not_utf8_at_the_top(env: Env, engine: Any) -> None:
    from tests.integration.test_sandbox import run_bounded

    j = env.submit(["mkdir -p /files/output && echo x > \"$(printf '/files/output/a\\377b')\""])
    assert run_bounded(env, engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "finished", (j.status.value, details[:300])


# --- a hostile server: download and upload requests -------------------------------------------


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
    base = make_base(tmp_path)
    (tmp_path / "canary.txt").write_text("canary")
    req = {"method": "GET", "url": url.replace("{tmp}", str(tmp_path)), "headers": {}}
    claims = [json.dumps({"7": job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, {("GET", "/files/"): file_url_answer(req)}) as server:
        ended, _ = run_daemon(server.url, base, engine)
        assert ended
        final = server.reports_of("7")[-1]
    assert (tmp_path / "canary.txt").read_text() == "canary"
    # a server's bad answer is not this worker's trouble: the job's error, naming the input
    assert final[0] == "error", final
    assert final[1].startswith("input in/x.bin: "), final


def test_a_server_cannot_make_the_root_fetcher_send_any_method_to_a_localhost_service(
    tmp_path: Path, engine: Any
) -> None:
    """SSRF: the download request is performed as given, method included: a DELETE to a service
    that listens on the host's loopback only (a Docker API on tcp://127.0.0.1:2375, a registry,
    an admin endpoint). Here a canary server of the test's own records what it got."""
    base = make_base(tmp_path)
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
                {"7": job("cat /files/in/x.bin; exit 3", files_down={"in/x.bin": "fid1"})}
            ).encode()
        ]
        with HostileServer(claims, {("GET", "/files/"): file_url_answer(req)}) as server:
            ended, _ = run_daemon(server.url, base, engine)
            assert ended
            final = server.reports_of("7")[-1]
    # before the fix the job read what the loopback-only service answered (in its log tail)
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
    base = make_base(tmp_path)
    deleted_at: list[float] = []
    started = time.monotonic()

    def put(h: BaseHTTPRequestHandler) -> None:
        if time.monotonic() - started > 4:
            deleted_at.append(time.monotonic())
            h.answer(404, b'{"detail":"Not Found"}')  # type: ignore[attr-defined]
        else:
            h.answer(204)  # type: ignore[attr-defined]

    routes: dict[tuple[str, str], Route] = {("PUT", "/jobs/"): put, ("GET", "/slow"): trickle}
    claims = [json.dumps({"7": job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, routes) as server:
        req = {"method": "GET", "url": "http://127.0.0.2:1/unused", "headers": {}}
        req["url"] = f"{server.url}/slow"
        server.routes[("GET", "/files/")] = file_url_answer(req)
        ended, _ = run_daemon(server.url, base, engine, timeout_s=30)
        lasted = time.monotonic() - started
    assert deleted_at, "the server never said the job is gone"
    assert ended, (
        f"the job slot was still held {lasted:.0f} s after the start, {lasted - 4:.0f} s after the deletion"
    )


# --- a hostile server: one answer that blocks every other final status ------------------------


def test_a_malformed_retry_after_on_one_jobs_status_does_not_block_the_others(
    tmp_path: Path, engine: Any
) -> None:
    """Job 1's final status PUT (and its status GET) answer 503 with `Retry-After: 120s` (a value
    that is neither seconds nor an HTTP date). Job 2 ends later; its status must still be delivered."""
    base = make_base(tmp_path)

    def busy_for_job_1(h: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(h.path).query)
        if h.path.startswith("/jobs/1/status") and (
            h.command == "GET" or q.get("status", [""])[0] in ("finished", "error")
        ):
            h.answer(503, b'{"detail":"busy"}', {"Retry-After": "120s"})  # type: ignore[attr-defined]
            return
        if h.command == "PUT":
            server.puts.append((urlsplit(h.path).path, q))
            h.answer(204)  # type: ignore[attr-defined]
        else:
            h.answer(404, b"{}")  # type: ignore[attr-defined]

    claims = [json.dumps({"1": job()}).encode(), b"{}", json.dumps({"2": job("sleep 1")}).encode()]
    server = HostileServer(
        claims, {("PUT", "/jobs/"): busy_for_job_1, ("GET", "/jobs/1/"): busy_for_job_1}
    )
    with server:
        daemon = build_daemon(settings(server.url, base), docker_client=engine)
        t = threading.Thread(target=daemon.run, daemon=True)
        t.start()
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if any(s in ("finished", "error") for s, _ in server.reports_of("2")):
                    break
                time.sleep(0.2)
            two = server.reports_of("2")
        finally:
            daemon.worker.request_force_stop()
            t.join(60)
    assert any(s == "finished" for s, _ in two), (
        f"job 2's final status never reached the server: {two}"
    )


# --- a hostile spec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_vars",
    [{"A=B": "x"}, {"": "x"}, {"A\u0000B": "x"}, {"A": "x\u0000y"}, {"A\nB": "x"}],
    ids=["eq-in-key", "empty-key", "nul-in-key", "nul-in-value", "newline-in-key"],
)
def test_odd_env_keys_end_the_job_as_an_invalid_spec(
    env: Env, engine: Any, env_vars: dict[str, str]
) -> None:
    from tests.integration.test_sandbox import only_state_left, run_bounded

    spec = job("env")
    spec["app"]["env"] = env_vars
    spec["handler"]["files_up"] = {"output": "output", "log": "log"}
    j = env.submit_raw(spec)
    after = env.submit(["true"], files_up={})
    assert run_bounded(env, engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "error", (j.status.value, details)
    assert details.startswith("invalid job spec: app.env"), details
    assert after.status.value == "finished"
    only_state_left(env)


@pytest.mark.parametrize("image", ["--privileged", "-v/:/host", "busybox;id", "a" * 5000])
def test_odd_image_references_are_the_jobs_error(env: Env, engine: Any, image: str) -> None:
    from tests.integration.test_sandbox import only_state_left, run_bounded

    j = env.submit_raw(job("true", image_url=image))
    assert run_bounded(env, engine) == 0
    details = j.history[-1].get("runtime_details") or ""
    assert j.status.value == "error", (j.status.value, details)
    only_state_left(env)


def test_a_claim_of_1000_jobs_when_one_was_asked_for(tmp_path: Path, engine: Any) -> None:
    base = make_base(tmp_path)
    many = {str(i): job() for i in range(1, 1001)}
    with HostileServer([json.dumps(many).encode()]) as server:
        ended, _ = run_daemon(server.url, base, engine, timeout_s=300)
        finals = {
            i: server.reports_of(str(i))[-1][0] for i in range(1, 1001) if server.reports_of(str(i))
        }
    assert ended
    assert len(finals) == 1000
    assert sorted(p.name for p in base.iterdir()) == [".fetcher"]


# --- a hostile job: links in place of output directories, modes, leftovers -------------------


@pytest.mark.parametrize(
    "swap",
    [
        "rm -rf /files/output && ln -s {canary} /files/output",
        "rm -rf /files/a && ln -s {canary} /files/a",
        "rm -rf /files/output && ln -s ../../.. /files/output",
        "rm -rf /files/a && mkfifo /files/a",
    ],
    ids=["files_up-dir", "parent-of-files_up-dir", "relative-up", "fifo-parent"],
)
def test_an_output_directory_swapped_for_a_link_is_not_followed(
    env: Env, engine: Any, swap: str
) -> None:
    from tests.integration.test_sandbox import only_state_left, run_bounded

    canary = env.root / "canary-dir"
    (canary / "b").mkdir(parents=True)
    (canary / "secret.txt").write_text("host secret")
    (canary / "b" / "secret2.txt").write_text("host secret 2")
    j = env.submit_raw(
        job(
            swap.format(canary=canary),
            files_up={"output": "output", "artifact": "a/b", "log": "log"},
        )
    )
    assert run_bounded(env, engine) == 0
    names = {u["filename"] for u in j.uploads}
    assert "secret.txt" not in names and "secret2.txt" not in names, names
    assert (canary / "secret.txt").read_text() == "host secret"
    assert (canary / "b" / "secret2.txt").read_text() == "host secret 2"
    assert j.status.value == "finished", j.history[-1]
    only_state_left(env)


@pytest.mark.parametrize(
    "cmd",
    [
        "(trap '' TERM HUP; sleep 1000) & (setsid sleep 1000 &) ; echo bye",
        "chmod -R 000 /files/output /files/log; chmod 000 /files; echo locked",
        "mkdir -p /files/output/d && touch /files/output/d/f && chmod 000 /files/output/d && chattr +i /files/output/d/f 2>&1; echo tried",
        "mkdir -p /files/output && ln /files/output/../output /files/output/hl 2>&1; echo x > /files/output/f && ln /files/output/f /files/output/f2; echo hard",
    ],
    ids=["background", "chmod-000", "chattr", "hardlinks"],
)
def test_a_job_that_leaves_processes_or_locks_its_files_is_cleaned_up(
    env: Env, engine: Any, cmd: str
) -> None:
    from tests.integration.test_sandbox import only_state_left, run_bounded

    j = env.submit([cmd])
    assert run_bounded(env, engine, timeout_s=60) == 0
    assert j.status.value == "finished", j.history[-1]
    only_state_left(env)


def test_a_job_ignoring_sigterm_past_the_time_limit_is_killed(env: Env, engine: Any) -> None:
    from tests.integration.test_sandbox import only_state_left, run_bounded

    j = env.submit(["trap '' TERM; (trap '' TERM; sleep 1000) & sleep 1000"])
    t = time.monotonic()
    assert run_bounded(env, engine, timeout_s=60, job_time_limit_s=2, stop_grace_s=1) == 0
    took = time.monotonic() - t
    assert j.status.value == "error" and took < 20
    only_state_left(env)


# --- a hostile server: the token, redirects, odd answers --------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_from_the_apis_own_download_url_carries_no_token_elsewhere(
    tmp_path: Path, engine: Any, code: int
) -> None:
    base = make_base(tmp_path)
    seen: list[dict[str, str]] = []

    def elsewhere(h: BaseHTTPRequestHandler) -> None:
        seen.append({k.lower(): v for k, v in h.headers.items()})
        h.answer(200, b"data")  # type: ignore[attr-defined]

    with HostileServer([], {("GET", "/"): elsewhere}) as other:
        other_url = other.url.replace("127.0.0.1", "localhost")  # another host name, same box

        def redirect(h: BaseHTTPRequestHandler) -> None:
            h.answer(code, b"", {"Location": f"{other_url}/x"})  # type: ignore[attr-defined]

        claims = [json.dumps({"7": job(files_down={"in/x.bin": "fid1"})}).encode()]
        with HostileServer(claims, {("GET", "/dl"): redirect}) as server:
            req = {
                "method": "GET",
                "url": f"{server.url}/dl/x",
                "headers": {"authorization": "Bearer echoed"},
            }
            server.routes[("GET", "/files/")] = file_url_answer(req)
            ended, _ = run_daemon(server.url, base, engine)
            final = server.reports_of("7")[-1]
    assert ended
    assert seen, final
    assert all(TOKEN not in json.dumps(h) for h in seen), seen


@pytest.mark.parametrize(
    "trouble",
    ["redirect-loop", "bad-retry-after"],
)
def test_an_odd_answer_to_a_download_is_not_a_fetcher_internal_error(
    tmp_path: Path, engine: Any, trouble: str
) -> None:
    base = make_base(tmp_path)

    def dl(h: BaseHTTPRequestHandler) -> None:
        if trouble == "redirect-loop":
            h.answer(302, b"", {"Location": "/dl/again"})  # type: ignore[attr-defined]
        else:
            h.answer(503, b"{}", {"Retry-After": "120s"})  # type: ignore[attr-defined]

    claims = [json.dumps({"7": job(files_down={"in/x.bin": "fid1"})}).encode()]
    with HostileServer(claims, {("GET", "/dl"): dl}) as server:
        req = {"method": "GET", "url": f"{server.url}/dl/x", "headers": {}}
        server.routes[("GET", "/files/")] = file_url_answer(req)
        ended, _ = run_daemon(server.url, base, engine)
        final = server.reports_of("7")[-1]
    assert ended
    assert "internal error" not in final[1], final
    if trouble == "redirect-loop":  # the server's bad answer: the job's error, not this box's fault
        assert final[0] == "error" and "TooManyRedirects" in final[1], final
    else:  # a server that stays busy: handed back with what it said, as any outage
        assert final[0] == "queued" and "HTTP 503" in final[1], final
