"""The mock's queue follows the real server's rules, seen over real HTTP through the fetcher's
client: matching and order of claims, jobs kept and handed out as the JSON submitted, hand-backs
and re-queues after a keep-alive timeout (up to the retry limit), the workers that claimed a job
(the last one owns it, whatever the status it sends), deletions."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from fetcher.errors import ApiUnavailable, JobGone
from fetcher.models import HardwareSpecs, JobStatus
from tests.helpers import (
    API_KEY,
    TOKEN,
    WORKER_HEADERS,
    Env,
    claim_offer,
    decode_job,
    statuses,
    wait_for,
)


# --- claims: matching and order ---------------------------------------------------------------
def test_claim_returns_the_queue_id_and_moves_the_job_to_pulled(env: Env) -> None:
    job = env.submit(["true"])
    jobs = env.client().claim_jobs(claim_offer()).jobs
    assert list(jobs) == [str(job.id)]
    assert jobs[str(job.id)].meta.job_id == 4242  # meta.job_id is not the queue id
    assert job.status == JobStatus.pulled and job.worker == "worker"
    assert env.client().claim_jobs(claim_offer()).jobs == {}


@pytest.mark.parametrize(
    ("hardware", "worker_offer", "given"),
    [
        (HardwareSpecs(memory=5000), {}, False),
        (HardwareSpecs(cpu_cores=8), {}, False),
        (HardwareSpecs(gpu_mem=1000), {}, False),
        (HardwareSpecs(gpu_mem=1000), {"gpu_mem": 40000}, True),
        (HardwareSpecs(gpu_model="A100"), {"gpu_mem": 40000, "gpu_model": "V100"}, False),
        (HardwareSpecs(gpu_model="A100"), {"gpu_mem": 40000, "gpu_model": "A100"}, True),
        (HardwareSpecs(gpu_archi="ampere"), {"gpu_archi": "volta"}, False),
        (HardwareSpecs(), {"gpu_model": "anything"}, True),
    ],
)
def test_claim_gives_only_jobs_that_fit(
    env: Env, hardware: HardwareSpecs, worker_offer: dict[str, object], given: bool
) -> None:
    env.submit(["true"], hardware=hardware)
    assert bool(env.client().claim_jobs(claim_offer(**worker_offer)).jobs) is given


def test_claim_order_is_group_then_priority_then_age(env: Env) -> None:
    old_low = env.submit(["true"], priority=0)
    new_high = env.submit(["true"], priority=5)
    grouped = env.submit(["true"], priority=0, group="lab")
    got = list(env.client().claim_jobs(claim_offer(groups=["lab"], limit=3)).jobs)
    assert got == [str(grouped.id), str(new_high.id), str(old_low.id)]


def test_claim_honours_older_than_and_needs_memory(env: Env) -> None:
    env.submit(["true"])
    assert env.client().claim_jobs(claim_offer(older_than=3600)).jobs == {}
    resp = requests.get(
        f"{env.mock.url}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert resp.status_code == 422


@pytest.mark.parametrize(
    ("hardware", "given"),
    [
        ("missing", True),
        (None, True),
        ({"memory": None, "cpu_cores": None, "gpu_mem": None}, True),
        ({}, True),
        ("not an object", True),
        ({"memory": "2000"}, True),
        ({"memory": 999_999}, False),
        ({"gpu_mem": 1}, False),
        ({"gpu_model": "A100"}, False),
        ({"gpu_archi": None, "gpu_model": None}, True),
    ],
)
def test_matching_reads_the_hardware_of_the_json_defensively(
    env: Env, hardware: Any, given: bool
) -> None:
    job = decode_job()
    if hardware == "missing":
        del job["hardware"]
    else:
        job["hardware"] = hardware
    env.submit_raw(job)
    r = requests.get(
        f"{env.mock.url}/jobs", params={"memory": 4000}, headers=WORKER_HEADERS, timeout=5
    )
    assert bool(r.json()) is given


# --- a submitted job is kept as the JSON received ---------------------------------------------
def test_submitted_job_is_handed_out_exactly_as_the_json_received(env: Env) -> None:
    # Given a DECODE job with odd meta, extras at every level and a long string, submitted over HTTP
    job = decode_job(image_version=10, registry={"mirror": "x"})
    job["meta"] = {"job_id": "abc-1", "date_created": "last tuesday", "owner": {"id": [1, 2]}}
    job["app"]["extra"] = None
    job["hardware"] = {"memory": 2000, "gpu_count": 0}  # cpu_cores, gpu_* missing
    job["future_field"] = "é" * 100_000
    body = {"job": job, "paths_upload": env.paths_upload(), "priority": 1, "unknown": True}
    r = requests.post(f"{env.mock.url}/_jobs", json=body, headers={"x-api-key": API_KEY}, timeout=5)
    assert r.status_code == 201 and r.json()["job"] == job
    # When a worker claims it
    got = requests.get(
        f"{env.mock.url}/jobs", params={"memory": 4000}, headers=WORKER_HEADERS, timeout=5
    )
    # Then the answer is that JSON, not a re-serialisation through anyone's models
    assert got.json() == {str(r.json()["id"]): job}
    assert json.loads(got.content)[str(r.json()["id"])]["meta"]["date_created"] == "last tuesday"


BAD_SHAPES: list[tuple[Any, str]] = [
    ({**decode_job(), "handler": "registry.example/decode:1"}, "handler"),
    ({**decode_job(), "handler": {"files_up": {"log": "log"}}}, "handler.image_url"),
    (decode_job(image_url="   "), "handler.image_url"),
    ({**decode_job(), "app": {"cmd": "echo not a list"}}, "app.cmd"),
    (decode_job(files_up={"checkpoints": "ckpt"}), "handler.files_up.checkpoints.[key]"),
    ({**decode_job(), "hardware": {"memory": "lots"}}, "hardware.memory"),
    (["not", "an", "object"], "(root)"),
]


def test_shapes_the_fetcher_must_refuse_reach_it_and_are_refused(env: Env) -> None:
    # Given jobs of shapes no fetcher can run, and one good one with a huge image URL
    bad = [env.submit_raw(spec) for spec, _ in BAD_SHAPES]
    huge = env.submit_raw(decode_job(image_url="registry.example/" + "x" * 200_000))
    # When the fetcher's client claims them all
    result = env.client().claim_jobs(claim_offer(limit=20))
    # Then every one was handed out (and so claimed), the bad ones reported by field
    assert sorted(e.job_id for e in result.invalid) == sorted(str(j.id) for j in bad)
    fields = {e.job_id: e.field for e in result.invalid}
    assert [fields[str(j.id)] for j in bad] == [f for _, f in BAD_SHAPES]
    assert list(result.jobs) == [str(huge.id)]
    assert all(j.status == JobStatus.pulled for j in [*bad, huge])


def test_a_malformed_submission_envelope_is_422(env: Env) -> None:
    headers = {"x-api-key": API_KEY}
    r = requests.post(f"{env.mock.url}/_jobs", json={"job": {}}, headers=headers, timeout=5)
    assert r.status_code == 422 and "paths_upload" in r.json()["detail"]
    r = requests.post(f"{env.mock.url}/_jobs", data=b"{", headers=headers, timeout=5)
    assert r.status_code == 422
    assert env.state.jobs == {}


def test_submit_with_the_fetchers_models_still_works(env: Env) -> None:
    job = env.submit(["echo", "hi"])
    assert job.job["app"]["cmd"] == ["echo", "hi"] and job.job["meta"]["job_id"] == 4242


# --- hand-backs, re-queues, deletions -----------------------------------------------------------
def test_queued_hands_the_job_back_and_not_to_the_same_worker(env: Env) -> None:
    other = env.add_worker("other")
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert client.claim_jobs(claim_offer()).jobs == {}
    assert list(env.client(token=other).claim_jobs(claim_offer()).jobs) == [jid]
    with pytest.raises(JobGone):  # no longer this worker's
        client.put_status(jid, JobStatus.running)
    assert job.worker == "other"


def test_silent_jobs_are_requeued_retry_limit_times_then_failed(env: Env) -> None:
    # the retry limit counts re-queues after a timeout (the real server's MAX_RETRIES), not claims
    env.state.config.failure_timeout_s = 0.3
    env.state.config.check_interval_s = 0.1
    env.state.config.retry_limit = 1
    job = env.submit(["true"])
    client = env.client()
    client.claim_jobs(claim_offer())
    wait_for(lambda: job.status == JobStatus.queued, 5, "re-queue")
    env.client(token=env.add_worker("other")).claim_jobs(claim_offer())
    wait_for(lambda: job.status == JobStatus.error, 5, "failure after retry limit")
    assert statuses(job) == ["queued", "pulled", "queued", "pulled", "error"]
    assert job.retries == 1 and job.history[-1]["runtime_details"] == "max retries reached"


def test_deleted_job_answers_404_then_500(env: Env) -> None:
    env.submit(["true"])
    client = env.client(retry_s=0.3)
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    env.state.delete(int(jid))
    with pytest.raises(JobGone):
        client.put_status(jid, JobStatus.running)
    with pytest.raises(ApiUnavailable, match="500"):
        client.put_status(jid, JobStatus.running)
    with pytest.raises(JobGone):
        client.get_status(jid)


def test_unknown_id_is_500_on_put_and_404_on_get(env: Env) -> None:
    r = requests.put(
        f"{env.mock.url}/jobs/999/status?status=running",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert (r.status_code, r.text) == (500, "Internal Server Error")
    with pytest.raises(JobGone):
        env.client().get_status("999")


# --- the workers list: the last claimer owns the job ----------------------------------------------
@pytest.fixture
def fast_timeouts(env: Env) -> Env:
    env.state.config.failure_timeout_s = 0.3
    env.state.config.check_interval_s = 0.1
    return env


def test_after_a_timeout_requeue_the_silent_workers_put_is_accepted_and_puts_it_back(
    fast_timeouts: Env,
) -> None:
    env = fast_timeouts
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    wait_for(lambda: job.status == JobStatus.queued, 5, "re-queue after the keep-alive timeout")
    env.state.config.failure_timeout_s = 300
    # the old worker's next keep-alive answers 204 and silently takes the job back
    client.put_status(jid, JobStatus.running)
    assert job.status == JobStatus.running and job.workers == ["worker"]
    assert client.get_status(jid) == JobStatus.running
    assert statuses(job) == ["queued", "pulled", "queued", "running"]


def test_after_a_timeout_requeue_and_another_claim_the_silent_worker_gets_404(
    fast_timeouts: Env,
) -> None:
    env = fast_timeouts
    job = env.submit(["true"])
    old = env.client()
    jid = next(iter(old.claim_jobs(claim_offer()).jobs))
    wait_for(lambda: job.status == JobStatus.queued, 5, "re-queue after the keep-alive timeout")
    env.state.config.failure_timeout_s = 300
    new = env.client(env.add_worker("other"))
    assert list(new.claim_jobs(claim_offer()).jobs) == [jid]
    with pytest.raises(JobGone):
        old.put_status(jid, JobStatus.running)
    new.put_status(jid, JobStatus.running)
    assert job.workers == ["worker", "other"] and job.history[-1]["worker"] == "other"


def test_after_handing_back_the_worker_cannot_claim_it_but_its_put_still_counts(
    env: Env,
) -> None:
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert client.claim_jobs(claim_offer()).jobs == {}  # RETRY_DIFFERENT: not the same worker again
    client.put_status(jid, JobStatus.running)  # accepted: it is still the last claimer
    assert job.status == JobStatus.running


def test_only_the_last_claimer_may_put_whatever_the_status(env: Env) -> None:
    job = env.submit(["true"])
    owner = env.client()
    stranger = env.client(env.add_worker("stranger"))
    jid = next(iter(owner.claim_jobs(claim_offer()).jobs))
    with pytest.raises(JobGone):
        stranger.put_status(jid, JobStatus.running)
    owner.put_status(jid, JobStatus.finished)
    owner.put_status(jid, JobStatus.running)  # the server enforces no order of statuses
    with pytest.raises(JobGone):
        stranger.put_status(jid, JobStatus.error)
    assert statuses(job)[-2:] == ["finished", "running"]


def test_retry_different_off_lets_a_worker_claim_a_job_again(env: Env) -> None:
    env.state.config.retry_different = False
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert list(client.claim_jobs(claim_offer()).jobs) == [jid]
    assert job.workers == ["worker", "worker"]


def test_a_deleted_job_is_404_to_a_stranger_then_404_to_its_owner_then_500(env: Env) -> None:
    job = env.submit(["true"])
    owner = env.client()
    stranger = env.client(env.add_worker("stranger"))
    jid = next(iter(owner.claim_jobs(claim_offer()).jobs))
    env.state.delete(job.id)
    with pytest.raises(JobGone):  # not its job: the server does not look further
        stranger.put_status(jid, JobStatus.running)
    with pytest.raises(JobGone):  # the owner's PUT tells the server of the deletion
        owner.put_status(jid, JobStatus.running)
    r = requests.put(
        f"{env.mock.url}/jobs/{jid}/status",
        params={"status": "running"},
        headers=WORKER_HEADERS,
        timeout=5,
    )
    assert (r.status_code, r.text) == (500, "Internal Server Error")
