"""A hostile server: what its claim answers may hold must never touch a path, nor stop the daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fetcher.daemon import build_daemon
from fetcher.settings import Settings
from tests.helpers import IMAGE, TOKEN, fetcher_id
from tests.helpers.hostile import HostileServer

pytestmark = pytest.mark.docker


def job(cmd: str = "true") -> dict[str, Any]:
    return {
        "app": {"cmd": [cmd], "env": None},
        "handler": {"image_url": IMAGE, "files_down": None, "files_up": None},
        "meta": {"job_id": 1, "date_created": "2026-11-21"},
        "hardware": {"cpu_cores": 1, "memory": 64},
    }


def world(tmp_path: Path) -> tuple[Path, dict[Path, bytes]]:
    """PATH_BASE with canary files around it: in its parent, in a sibling, in its state dir."""
    base = tmp_path / "base"
    (base / ".fetcher").mkdir(parents=True)
    canaries = {
        tmp_path / "parent-canary.txt": b"parent",
        tmp_path / "x" / "sibling-canary.txt": b"sibling",
        base / "base-canary.txt": b"base",
        base / ".fetcher" / "state-canary.txt": b"state",
    }
    for path, data in canaries.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return base, canaries


def settings(url: str, base: Path) -> Settings:
    return Settings(
        _env_file=None,
        api_url=url,
        access_token=TOKEN,
        path_base=base,
        poll_interval_s=0.05,
        keepalive_interval_s=1.0,
        api_retry_s=2.0,
        fetcher_id=fetcher_id(),
        shm_size="64m",
        job_default_memory_mb=64,
        stop_grace_s=1.0,
    )


def run(url: str, base: Path, engine: Any) -> int:
    return build_daemon(settings(url, base), exit_when_idle=True, docker_client=engine).run()


# An absolute id is written "{tmp}/...": it points into the test's own directory. Never use a real
# host path such as /etc here: a regression of the id check would make the fetcher delete it
# (as root in CI). An earlier version of this very test did just that to a development box.
BAD_IDS = ["", ".", "..", "../x", ".fetcher", "a/b", "{tmp}/x", "7/../..", "1 ", "0x1", "٣", "-1"]


@pytest.mark.parametrize("queue_id", BAD_IDS)
def test_a_claim_with_a_queue_id_that_is_not_a_small_integer_touches_no_path(
    tmp_path: Path, engine: Any, queue_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server whose claim answer is keyed by a hostile queue id, then a good job
    base, canaries = world(tmp_path)
    queue_id = queue_id.replace("{tmp}", str(tmp_path))
    assert queue_id.startswith(str(tmp_path)) or not queue_id.startswith("/")
    claims = [json.dumps({queue_id: job()}).encode(), json.dumps({"7": job()}).encode()]
    with HostileServer(claims) as server:
        # When the fetcher runs until the queue is empty
        assert run(server.url, base, engine) == 0
        # Then every canary is intact, no status was sent for the bad id, and the good job ran
        for path, data in canaries.items():
            assert path.read_bytes() == data, f"{path} was touched"
        assert server.statuses_of("7")[-1] == "finished"
        sent_to = {p for p, _ in server.puts}
        assert sent_to == {"/jobs/7/status"}, sent_to
    assert sorted(p.name for p in base.iterdir()) == [".fetcher", "base-canary.txt"]
    refused = [r.getMessage() for r in caplog.records if "queue id" in r.getMessage()]
    assert len(refused) == 1 and "Traceback" not in refused[0], refused
    starts_again(base, engine)


def starts_again(base: Path, engine: Any) -> None:
    """A new daemon on the same PATH_BASE starts, and runs a job to its end."""
    with HostileServer([json.dumps({"99": job()}).encode()]) as server:
        assert run(server.url, base, engine) == 0
        assert server.statuses_of("99")[-1] == "finished"


def test_a_claim_answer_nested_100000_deep_is_a_bad_answer_and_the_loop_goes_on(
    tmp_path: Path, engine: Any
) -> None:
    base, _ = world(tmp_path)
    nested = b'{"7": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with HostileServer([nested, nested, json.dumps({"8": job()}).encode()]) as server:
        assert run(server.url, base, engine) == 0
        assert server.statuses_of("8")[-1] == "finished"
        assert server.claims_served >= 4
    starts_again(base, engine)


def test_a_claim_of_10_mb_is_handled_and_the_loop_goes_on(tmp_path: Path, engine: Any) -> None:
    base, _ = world(tmp_path)
    big = job()
    big["meta"]["blob"] = "x" * (10 * 1024 * 1024)  # an extra the fetcher does not use
    huge_cmd = job("echo " + "y" * (10 * 1024 * 1024))  # a command the kernel refuses to exec
    claims = [json.dumps({"5": big}).encode(), json.dumps({"6": huge_cmd}).encode()]
    with HostileServer(claims) as server:
        assert run(server.url, base, engine) == 0
        assert server.statuses_of("5")[-1] == "finished"
        six = server.statuses_of("6")
        assert six[-1] in ("error", "queued"), six
        # every runtime_details fits in a query string
        assert all(len(json.dumps(q)) < 20_000 for _, q in server.puts)


def test_many_bad_answers_in_a_row_never_stop_the_daemon(tmp_path: Path, engine: Any) -> None:
    base, _ = world(tmp_path)
    answers = [
        b"not json",
        b"[]",
        b'"a string"',
        b"null",
        b'{"9": "not an object"}',
        b'{"10": {"handler": []}}',
        b'{"11": {"handler": {"image_url": ""}}}',
        b"\xff\xfe\x00garbage",
        json.dumps({"12": job()}).encode(),
    ]
    with HostileServer(answers) as server:
        assert run(server.url, base, engine) == 0
        assert server.statuses_of("12")[-1] == "finished"
        for bad in ("9", "10", "11"):
            [final] = [q for p, q in server.puts if p == f"/jobs/{bad}/status"]
            assert final["status"] == ["error"]
            assert final["runtime_details"][0].startswith("invalid job spec: ")
            assert "\n" not in final["runtime_details"][0]
