"""WorkerApi against `responses`: the claim (the offer in the server's spelling, queue ids kept,
refused at the boundary unless small integers, invalid specs named by field), statuses, and runtime
details that keep their first line and fit a URL."""

from __future__ import annotations

import json

import pytest
import responses

from fetcher.api.client import fit_details
from fetcher.errors import BadResponse, JobGone
from fetcher.models import ClaimOffer, JobStatus
from tests.helpers import API, BEARER, query, worker_api

SPEC = {
    "app": {"cmd": ["echo", "$(ls)"], "env": {"DECODE_SEED": "42"}},
    "handler": {
        "image_url": "reg/decode:1",
        "files_down": {"a.yaml": "data/u/a.yaml"},
        "files_up": {"output": "out", "log": "log"},
    },
    "meta": {
        "job_id": 4242,
        "date_created": "2026-11-21T13:48:20.661126+00:00",
        "extra_key": {"x": 1},
    },
    "hardware": {
        "cpu_cores": 2,
        "memory": 2000,
        "gpu_model": None,
        "gpu_archi": None,
        "gpu_mem": None,
    },
}


# --- claiming ---------------------------------------------------------------------------------
def test_claim_sends_the_offer_with_the_servers_spelling_and_keeps_queue_ids(
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(f"{API}/jobs", json={"17": SPEC})
    offer = ClaimOffer(
        memory=8000,
        cpu_cores=4,
        gpu_mem=40960,
        gpu_model="A100",
        gpu_archi="ampere",
        groups=["lab", "other"],
        limit=2,
    )
    result = worker_api().claim_jobs(offer)
    q = query(rsps.calls[0])
    assert q["memory"] == ["8000"] and q["cpu_cores"] == ["4"] and q["gpu_mem"] == ["40960"]
    assert q["gpu_model"] == ["A100"] and q["gpu_archi"] == ["ampere"] and q["limit"] == ["2"]
    assert q["groups"] == ["lab", "other"]
    assert "gpu_memory" not in q
    assert rsps.calls[0].request.headers["Authorization"] == BEARER
    assert list(result.jobs) == ["17"]  # the queue id, not meta.job_id
    assert result.jobs["17"].meta.job_id == 4242
    assert result.jobs["17"].meta.model_extra == {"extra_key": {"x": 1}}


def test_claim_without_gpu_sends_gpu_mem_zero_and_no_model(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", json={})
    assert worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).jobs == {}
    q = query(rsps.calls[0])
    assert q["gpu_mem"] == ["0"] and "gpu_model" not in q and "groups" not in q


def test_claim_accepts_null_cmd_env_and_files(rsps: responses.RequestsMock) -> None:
    spec = json.loads(json.dumps(SPEC))
    spec["app"] = {"cmd": None, "env": None}
    spec["handler"]["files_down"] = None
    spec["handler"]["files_up"] = None
    rsps.get(f"{API}/jobs", json={"3": spec})
    job = worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).jobs["3"]
    assert job.app.cmd is None and job.handler.files_down is None


def test_malformed_job_spec_is_a_typed_error_naming_job_and_field(
    rsps: responses.RequestsMock,
) -> None:
    bad = json.loads(json.dumps(SPEC))
    del bad["handler"]["image_url"]
    rsps.get(f"{API}/jobs", json={"5": bad, "6": SPEC})
    result = worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))
    assert list(result.jobs) == ["6"]
    [err] = result.invalid
    assert err.job_id == "5" and err.field == "handler.image_url"
    assert "job 5" in str(err) and "handler.image_url" in str(err)


@pytest.mark.parametrize("body", ["not json", "[1, 2]"])
def test_claim_answer_that_is_not_an_object_is_bad_response(
    rsps: responses.RequestsMock, body: str
) -> None:
    rsps.get(f"{API}/jobs", body=body)
    with pytest.raises(BadResponse):
        worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


@pytest.mark.parametrize(
    "queue_id", ["", ".", "..", "../x", ".fetcher", "a/b", "/etc", "007", "-1", "1 ", "٣", "1\n"]
)
def test_a_queue_id_that_is_not_a_small_integer_is_refused_at_the_boundary(
    rsps: responses.RequestsMock, queue_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.get(f"{API}/jobs", json={queue_id: SPEC, "12": SPEC})
    result = worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))
    assert list(result.jobs) == ["12"] and result.invalid == []
    assert len(result.refused) == 1
    [line] = [r.getMessage() for r in caplog.records if "queue id" in r.getMessage()]
    assert "not a small integer" in line and "\n" not in line


def test_an_invalid_spec_is_one_short_line_even_for_a_huge_key(
    rsps: responses.RequestsMock,
) -> None:
    bad = json.loads(json.dumps(SPEC))
    bad["handler"]["files_up"] = {"x" * 5000: "out"}
    rsps.get(f"{API}/jobs", json={"5": bad})
    [err] = worker_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).invalid
    line = f"invalid job spec: {err.field}: {err.problem}"
    assert len(line) < 400 and "\n" not in line and "handler.files_up" in line


# --- status -----------------------------------------------------------------------------------
def test_put_status_sends_status_and_details_and_accepts_empty_204(
    rsps: responses.RequestsMock,
) -> None:
    rsps.put(f"{API}/jobs/17/status", status=204, body="")
    worker_api().put_status("17", JobStatus.error, "exit_code: 3\nboom")
    q = query(rsps.calls[0])
    assert q == {"status": ["error"], "runtime_details": ["exit_code: 3\nboom"]}


def test_put_status_404_means_the_job_is_gone(rsps: responses.RequestsMock) -> None:
    rsps.put(f"{API}/jobs/17/status", status=404, json={"detail": "Job not found"})
    with pytest.raises(JobGone):
        worker_api().put_status("17", JobStatus.running)
    assert len(rsps.calls) == 1


def test_get_status_parses_the_json_string(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/17/status", json="running")
    assert worker_api().get_status("17") == JobStatus.running


def test_long_runtime_details_keep_their_end_and_fit_a_url() -> None:
    details = "exit_code: 1\n" + "x" * 20000 + "\nLAST LINE"
    fitted = fit_details(details)
    assert fitted.endswith("LAST LINE") and len(fitted) < 7000


def test_details_keep_their_first_line_when_the_log_is_long() -> None:
    # Given a job that ended with exit code 1 after 500 long lines of training progress
    log = "\n".join(f"epoch {i}: loss=0.{i:04d} " + "=" * 200 for i in range(500))
    fitted = fit_details(f"exit_code: 1\n{log}")
    assert fitted.startswith("exit_code: 1\n")
    assert fitted.endswith("epoch 499: loss=0.0499 " + "=" * 200)
    from urllib.parse import quote

    assert len(quote(fitted)) <= 6000


def test_details_with_a_huge_first_line_and_non_ascii_still_fit() -> None:
    fitted = fit_details("exit_code: 2 " + "é" * 5000 + "\n" + "ü" * 9000)
    from urllib.parse import quote

    assert fitted.startswith("exit_code: 2 ") and len(quote(fitted)) <= 6000
