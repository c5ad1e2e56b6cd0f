"""A hostile server's claim answers, on a real engine: whatever they hold (a queue id that is no
small integer, JSON nested 100000 deep, 10 MB, garbage, 1000 jobs for one asked) never touches a
path and never stops the daemon, and a new daemon starts on the same PATH_BASE afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HostileServer, deep_base, hostile_job, hostile_settings, run_until_idle

pytestmark = pytest.mark.docker


def claimed(cmd: str = "true") -> dict[str, Any]:
    """A small valid job as these servers send it (`meta` with a creation date)."""
    return hostile_job(cmd, meta={"job_id": 1, "date_created": "2026-11-21"})


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
    claims = [json.dumps({queue_id: claimed()}).encode(), json.dumps({"7": claimed()}).encode()]
    with HostileServer(claims) as server:
        # When the fetcher runs until the queue is empty
        assert run_until_idle(hostile_settings(server.url, base), engine) == 0
        # Then every canary is intact, no status was sent for the bad id, and the good job ran
        for path, data in canaries.items():
            assert path.read_bytes() == data, f"{path} was touched"
        assert server.statuses_of("7")[-1] == "finished"
        sent_to = {p for p, _ in server.puts}
        assert sent_to == {"/jobs/7/status"}, sent_to
    assert sorted(p.name for p in base.iterdir()) == [".fetcher", "base-canary.txt"]
    refused = [r.getMessage() for r in caplog.records if "queue id" in r.getMessage()]
    assert len(refused) == 1 and "Traceback" not in refused[0], refused
    starts_again_on(base, engine)


def starts_again_on(base: Path, engine: Any) -> None:
    """A new daemon on the same PATH_BASE starts, and runs a job to its end."""
    with HostileServer([json.dumps({"99": claimed()}).encode()]) as server:
        assert run_until_idle(hostile_settings(server.url, base), engine) == 0
        assert server.statuses_of("99")[-1] == "finished"


def test_a_claim_answer_nested_100000_deep_is_a_bad_answer_and_the_loop_goes_on(
    tmp_path: Path, engine: Any
) -> None:
    base, _ = world(tmp_path)
    nested = b'{"7": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with HostileServer([nested, nested, json.dumps({"8": claimed()}).encode()]) as server:
        assert run_until_idle(hostile_settings(server.url, base), engine) == 0
        assert server.statuses_of("8")[-1] == "finished"
        assert server.claims_served >= 4
    starts_again_on(base, engine)


def test_a_claim_of_10_mb_is_handled_and_the_loop_goes_on(tmp_path: Path, engine: Any) -> None:
    base, _ = world(tmp_path)
    big = claimed()
    big["meta"]["blob"] = "x" * (10 * 1024 * 1024)  # an extra the fetcher does not use
    huge_cmd = claimed("echo " + "y" * (10 * 1024 * 1024))  # a command the kernel refuses to exec
    claims = [json.dumps({"5": big}).encode(), json.dumps({"6": huge_cmd}).encode()]
    with HostileServer(claims) as server:
        assert run_until_idle(hostile_settings(server.url, base), engine) == 0
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
        json.dumps({"12": claimed()}).encode(),
    ]
    with HostileServer(answers) as server:
        assert run_until_idle(hostile_settings(server.url, base), engine) == 0
        assert server.statuses_of("12")[-1] == "finished"
        for bad in ("9", "10", "11"):
            [final] = [q for p, q in server.puts if p == f"/jobs/{bad}/status"]
            assert final["status"] == ["error"]
            assert final["runtime_details"][0].startswith("invalid job spec: ")
            assert "\n" not in final["runtime_details"][0]


def test_a_claim_of_1000_jobs_when_one_was_asked_for_ends_each_and_leaves_no_directory(
    tmp_path: Path, engine: Any
) -> None:
    base = deep_base(tmp_path)
    many = {str(i): hostile_job() for i in range(1, 1001)}
    with HostileServer([json.dumps(many).encode()]) as server:
        run_until_idle(hostile_settings(server.url, base), engine, timeout_s=300)
        finals = {
            i: server.reports_of(str(i))[-1][0] for i in range(1, 1001) if server.reports_of(str(i))
        }
    assert len(finals) == 1000
    assert sorted(p.name for p in base.iterdir()) == [".fetcher"]
