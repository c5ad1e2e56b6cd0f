"""The mock answers as the real server does (issue 8, point 8), over real HTTP on 127.0.0.1.

(a) the API's own download and upload requests echo the caller's `authorization` header and work
performed as given; (b) the internal routes answer 401 to a wrong or missing `x-api-key`; (c) a
submitted job is kept and handed out as the JSON received; (d) uploads land at
`<paths_upload[type]>/<base_path>/<name>`, in the store and in the fake S3; (e) the server keeps the
workers that claimed a job: the last one's PUTs are accepted whatever the status, others get 404.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from fetcher.api.auth import FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import JobGone
from fetcher.models import ClaimOffer, JobStatus, UploadType
from tests.helpers import (
    API_KEY,
    TOKEN,
    Env,
    decode_job,
    download_to,
    statuses,
    upload_from,
    wait_for,
)

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def api(env: Env, token: str = TOKEN) -> WorkerApi:
    return WorkerApi(env.mock.url, FixedToken(token), Http(retry_s=1.0, max_backoff_s=0.2))


def offer(**kw: Any) -> ClaimOffer:
    return ClaimOffer(**{"memory": 4000, "cpu_cores": 4, **kw})


def upload_request(env: Env, job_id: int, **params: str) -> dict[str, Any]:
    r = requests.post(
        f"{env.mock.url}/jobs/{job_id}/files/url", params=params, headers=BEARER, timeout=5
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def perform_upload(req: dict[str, Any], name: str, content: bytes) -> requests.Response:
    """Perform an upload request exactly as given: its headers, its data fields, then the file."""
    return requests.request(
        req["method"],
        req["url"],
        headers=req["headers"],
        data=req["data"],
        files={"file": (name, content)},
        timeout=5,
    )


# --- (a) the API's own URLs carry the caller's authorization ------------------------------------
def test_download_request_echoes_the_callers_authorization_and_works_as_given(env: Env) -> None:
    # Given a file in the store
    fid = env.input_file("user1/in/param.yaml", b"param: 1\n")
    # When a worker asks for its download request
    r = requests.get(f"{env.mock.url}/files/{quote(fid)}/url", headers=BEARER, timeout=5)
    # Then it is the API's own URL with the caller's header echoed, as the real server answers
    req = r.json()
    assert r.status_code == 200
    assert req["method"] == "get" and req["data"] == {}
    assert req["headers"] == {"authorization": f"Bearer {TOKEN}"}
    assert req["url"] == f"{env.mock.url}/files/{quote(fid)}/download"
    # and a client performing it as given (nothing added) gets the file
    got = requests.request(req["method"], req["url"], headers=req["headers"], timeout=5)
    assert (got.status_code, got.content) == (200, b"param: 1\n")
    # while the download URL itself still needs a worker's token
    assert requests.get(req["url"], timeout=5).status_code == 401


def test_presigned_s3_download_request_carries_no_authorization(env: Env) -> None:
    s3 = Path(env.state.data_root, "_s3/bucket/user1/calib.bin")
    s3.parent.mkdir(parents=True)
    s3.write_bytes(b"\x00calib")
    r = requests.get(
        f"{env.mock.url}/files/s3://bucket/user1/calib.bin/url", headers=BEARER, timeout=5
    )
    req = r.json()
    assert req["headers"] == {} and "X-Amz-Signature=" in req["url"]
    got = requests.request(req["method"], req["url"], headers=req["headers"], timeout=5)
    assert got.content == b"\x00calib"


def test_upload_request_for_the_api_route_echoes_authorization_and_works_as_given(
    env: Env,
) -> None:
    # Given a job claimed by this worker, its uploads going to the store
    job = env.submit(["true"])
    api(env).claim_jobs(offer())
    # When it asks where to upload output/sub/result.txt
    req = upload_request(env, job.id, type="output", base_path="sub")
    # Then the answer is the API's own upload route, with the query as sent and the header echoed
    assert req["method"] == "post" and req["data"] == {}
    assert req["headers"] == {"authorization": f"Bearer {TOKEN}"}
    assert req["url"] == f"{env.mock.url}/jobs/{job.id}/files/upload?type=output&base_path=sub"
    # and performing it as given stores the file (201, body null), where the protocol says
    r = perform_upload(req, "result.txt", b"42")
    assert (r.status_code, r.json()) == (201, None)
    assert Path(job.paths_upload["output"], "sub", "result.txt").read_bytes() == b"42"
    # without the header the upload route refuses, as every worker route does
    r = requests.post(req["url"], files={"file": ("x.txt", b"x")}, timeout=5)
    assert r.status_code == 401


def test_the_fetchers_client_downloads_and_uploads_through_the_echoed_requests(
    env: Env, tmp_path: Path
) -> None:
    fid = env.input_file("user1/in/a.bin", b"abc")
    job = env.submit(["true"])
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    assert download_to(client, fid, tmp_path / "a.bin") == 3
    upload_from(client, jid, tmp_path / "a.bin", UploadType.log, "log")
    assert Path(job.paths_upload["log"], "log", "a.bin").read_bytes() == b"abc"


# --- (b) the internal routes need the API key ---------------------------------------------------
ADMIN_ROUTES = [
    ("POST", "/_jobs"),
    ("GET", "/_jobs"),
    ("GET", "/_jobs/1"),
    ("DELETE", "/_jobs/1"),
    ("POST", "/_faults"),
    ("POST", "/_config"),
    ("POST", "/_reset"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("key", ["wrong-key", None])
def test_internal_routes_answer_401_to_a_wrong_or_missing_api_key(
    env: Env, method: str, path: str, key: str | None
) -> None:
    env.submit(["true"])
    headers = {"x-api-key": key} if key is not None else {}
    r = requests.request(method, env.mock.url + path, json={}, headers=headers, timeout=5)
    assert r.status_code == 401
    assert set(r.json()) == {"detail"}
    assert env.state.jobs[1].status == JobStatus.queued and not env.state.jobs[1].deleted


def test_internal_routes_work_with_the_api_key(env: Env) -> None:
    r = requests.get(f"{env.mock.url}/_jobs", headers={"x-api-key": API_KEY}, timeout=5)
    assert r.status_code == 200 and r.json() == []


# --- (c) a submitted job is kept as the JSON received -------------------------------------------
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
    got = requests.get(f"{env.mock.url}/jobs", params={"memory": 4000}, headers=BEARER, timeout=5)
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
    result = api(env).claim_jobs(offer(limit=20))
    # Then every one was handed out (and so claimed), the bad ones reported by field
    assert sorted(e.job_id for e in result.invalid) == sorted(str(j.id) for j in bad)
    fields = {e.job_id: e.field for e in result.invalid}
    assert [fields[str(j.id)] for j in bad] == [f for _, f in BAD_SHAPES]
    assert list(result.jobs) == [str(huge.id)]
    assert all(j.status == JobStatus.pulled for j in [*bad, huge])


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
    r = requests.get(f"{env.mock.url}/jobs", params={"memory": 4000}, headers=BEARER, timeout=5)
    assert bool(r.json()) is given


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


# --- (d) where uploads land ----------------------------------------------------------------------
def test_s3_upload_is_a_presigned_post_and_lands_under_the_s3_directory(
    env: Env, tmp_path: Path
) -> None:
    # Given a job whose uploads go to S3
    job = env.submit_raw(decode_job(), paths_upload=env.paths_upload(s3=True))
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    # When the fetcher's client uploads model/ckpt/last.pt
    f = tmp_path / "last.pt"
    f.write_bytes(b"weights")
    upload_from(client, jid, f, UploadType.artifact, "model/ckpt")
    # Then it lands at <paths_upload[artifact]>/<base_path>/<name> in the fake S3
    landed = Path(env.state.data_root, "_s3/bucket/user1/out/artifact/model/ckpt/last.pt")
    assert landed.read_bytes() == b"weights"
    assert job.uploads[-1] | {"path": ""} == {
        "type": "artifact",
        "base_path": "model/ckpt",
        "filename": "last.pt",
        "path": "",
        "size": 7,
    }
    # and the request it performed: no auth header, data fields with the key and the policy
    req = upload_request(env, job.id, type="artifact", base_path="model/ckpt")
    assert req["headers"] == {} and set(req["data"]) == {"key", "policy"}
    assert req["data"]["key"] == "user1/out/artifact/model/ckpt/${filename}"


def test_s3_post_wants_the_data_fields_first_and_a_key_inside_the_policy(env: Env) -> None:
    job = env.submit_raw(decode_job(), paths_upload=env.paths_upload(s3=True))
    api(env).claim_jobs(offer())
    req = upload_request(env, job.id, type="output", base_path="")
    # the file before the data fields: S3 refuses
    r = requests.post(
        req["url"],
        files=[("file", ("x.txt", b"x")), ("policy", (None, req["data"]["policy"]))],
        timeout=5,
    )
    assert r.status_code == 400
    # a key outside what the policy grants
    r = perform_upload({**req, "data": {**req["data"], "key": "other/${filename}"}}, "x.txt", b"x")
    assert r.status_code == 403
    # as given: stored at the output directory itself (base_path empty)
    assert perform_upload(req, "x.txt", b"x").status_code == 204
    assert Path(env.state.data_root, "_s3/bucket/user1/out/output/x.txt").read_bytes() == b"x"


def test_upload_url_refusals_follow_the_real_server(env: Env) -> None:
    job = env.submit(["true"])
    stranger = env.add_worker("stranger")
    api(env).claim_jobs(offer())
    url = f"{env.mock.url}/jobs/{job.id}/files/url"
    # a wrong type is refused before anything else, also for a job that is not the caller's
    r = requests.post(
        url,
        params={"type": "bogus"},
        headers={"Authorization": f"Bearer {stranger}"},
        timeout=5,
    )
    assert r.status_code == 422
    # a job that is not the caller's: 500, not 404
    r = requests.post(
        url,
        params={"type": "output"},
        headers={"Authorization": f"Bearer {stranger}"},
        timeout=5,
    )
    assert (r.status_code, r.text) == (500, "Internal Server Error")
    # an absolute base_path leaves the upload directory: 403
    r = requests.post(
        url,
        params={"type": "output", "base_path": str(env.root / "abs")},
        headers=BEARER,
        timeout=5,
    )
    assert r.status_code == 403


# --- (e) the workers list: the last claimer owns the job ----------------------------------------
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
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
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
    old = api(env)
    jid = next(iter(old.claim_jobs(offer()).jobs))
    wait_for(lambda: job.status == JobStatus.queued, 5, "re-queue after the keep-alive timeout")
    env.state.config.failure_timeout_s = 300
    new = api(env, env.add_worker("other"))
    assert list(new.claim_jobs(offer()).jobs) == [jid]
    with pytest.raises(JobGone):
        old.put_status(jid, JobStatus.running)
    new.put_status(jid, JobStatus.running)
    assert job.workers == ["worker", "other"] and job.history[-1]["worker"] == "other"


def test_after_handing_back_the_worker_cannot_claim_it_but_its_put_still_counts(
    env: Env,
) -> None:
    job = env.submit(["true"])
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert client.claim_jobs(offer()).jobs == {}  # RETRY_DIFFERENT: not the same worker again
    client.put_status(jid, JobStatus.running)  # accepted: it is still the last claimer
    assert job.status == JobStatus.running


def test_only_the_last_claimer_may_put_whatever_the_status(env: Env) -> None:
    job = env.submit(["true"])
    owner = api(env)
    stranger = api(env, env.add_worker("stranger"))
    jid = next(iter(owner.claim_jobs(offer()).jobs))
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
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert list(client.claim_jobs(offer()).jobs) == [jid]
    assert job.workers == ["worker", "worker"]


def test_a_deleted_job_is_404_to_a_stranger_then_404_to_its_owner_then_500(env: Env) -> None:
    job = env.submit(["true"])
    owner = api(env)
    stranger = api(env, env.add_worker("stranger"))
    jid = next(iter(owner.claim_jobs(offer()).jobs))
    env.state.delete(job.id)
    with pytest.raises(JobGone):  # not its job: the server does not look further
        stranger.put_status(jid, JobStatus.running)
    with pytest.raises(JobGone):  # the owner's PUT tells the server of the deletion
        owner.put_status(jid, JobStatus.running)
    r = requests.put(
        f"{env.mock.url}/jobs/{jid}/status", params={"status": "running"}, headers=BEARER, timeout=5
    )
    assert (r.status_code, r.text) == (500, "Internal Server Error")
