"""The mock's routes answer as the real server's do, over real HTTP on 127.0.0.1: worker tokens
and Cognito logins, status PUTs, the API's own download and upload requests (the caller's
`authorization` echoed, performed as given), pre-signed S3 requests, uploads landing at
`<paths_upload[type]>/<base_path>/<name>`, the internal routes behind the API key, injected
faults."""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from fetcher.api.auth import CognitoLogin
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import ApiRejected, ApiUnavailable, AuthError, TransferError
from fetcher.models import JobStatus, UploadType
from mock_api.state import Faults
from tests.helpers import (
    API_KEY,
    TOKEN,
    WORKER_HEADERS,
    Env,
    claim_offer,
    decode_job,
    download_to,
    upload_from,
)


# --- auth -------------------------------------------------------------------------------------
def test_missing_bad_and_non_worker_tokens_are_refused(env: Env) -> None:
    r = requests.get(f"{env.mock.url}/jobs?memory=1", timeout=5)
    assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
    r = requests.get(
        f"{env.mock.url}/jobs?memory=1", headers={"Authorization": "Basic x"}, timeout=5
    )
    assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
    with pytest.raises(AuthError, match="Not verified"):
        env.client(token="wrong").claim_jobs(claim_offer())
    env.state.add_user("bob", "pw-of-bob", ["users"])
    login = CognitoLogin(
        Http(), env.mock.url, "bob", "pw-of-bob", endpoint=env.mock.url + "/_cognito/"
    )
    with pytest.raises(AuthError, match="workers"):
        WorkerApi(env.mock.url, login, Http()).claim_jobs(claim_offer())


def test_access_info_is_public(env: Env) -> None:
    r = requests.get(f"{env.mock.url}/access_info", timeout=5)
    assert r.status_code == 200 and set(r.json()["cognito"]) == {
        "user_pool_id",
        "client_id",
        "region",
    }


def test_cognito_login_with_expiring_tokens_refreshes_and_relogs(env: Env) -> None:
    env.state.add_user("alice", "pw-of-alice", ["workers"])
    env.state.config.token_expiry_s = 1.0
    http = Http(retry_s=2)
    login = CognitoLogin(
        http, env.mock.url, "alice", "pw-of-alice", endpoint=env.mock.url + "/_cognito/"
    )
    client = WorkerApi(env.mock.url, login, http)
    job = env.submit(["true"])
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    first = login.token()
    time.sleep(1.1)  # past expiry: the next call refreshes first
    client.put_status(jid, JobStatus.running)
    assert login.token() != first
    # the server forgets every token (as after a key rotation): 401, log in again once, go on
    with env.state.lock:
        env.state.tokens.clear()
    env.state.config.token_expiry_s = 3600
    client.put_status(jid, JobStatus.postprocessing)
    assert job.status == JobStatus.postprocessing


def test_wrong_password_is_refused(env: Env) -> None:
    env.state.add_user("alice", "pw-of-alice", ["workers"])
    login = CognitoLogin(
        Http(), env.mock.url, "alice", "wrong", endpoint=env.mock.url + "/_cognito/"
    )
    with pytest.raises(AuthError, match="Incorrect username or password"):
        WorkerApi(env.mock.url, login, Http()).claim_jobs(claim_offer())


def test_status_put_is_204_and_recorded_with_details(env: Env) -> None:
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    client.put_status(jid, JobStatus.running, "step 1")
    assert client.get_status(jid) == JobStatus.running
    assert job.history[-1]["runtime_details"] == "step 1"
    r = requests.put(
        f"{env.mock.url}/jobs/{jid}/status?status=bogus",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert r.status_code == 422
    r = requests.put(
        f"{env.mock.url}/jobs/{jid}/status?status=running",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert r.status_code == 204 and r.content == b""


# --- files: the API's own URLs carry the caller's authorization ---------------------------------
def upload_request(env: Env, job_id: int, **params: str) -> dict[str, Any]:
    r = requests.post(
        f"{env.mock.url}/jobs/{job_id}/files/url", params=params, headers=WORKER_HEADERS, timeout=5
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


def test_download_request_echoes_the_callers_authorization_and_works_as_given(env: Env) -> None:
    # Given a file in the store
    fid = env.input_file("user1/in/param.yaml", b"param: 1\n")
    # When a worker asks for its download request
    r = requests.get(f"{env.mock.url}/files/{quote(fid)}/url", headers=WORKER_HEADERS, timeout=5)
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
        f"{env.mock.url}/files/s3://bucket/user1/calib.bin/url", headers=WORKER_HEADERS, timeout=5
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
    env.client().claim_jobs(claim_offer())
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
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    assert download_to(client, fid, tmp_path / "a.bin") == 3
    upload_from(client, jid, tmp_path / "a.bin", UploadType.log, "log")
    assert Path(job.paths_upload["log"], "log", "a.bin").read_bytes() == b"abc"


def test_files_download_by_store_path_and_by_s3_id(env: Env, tmp_path: Path) -> None:
    fid = env.input_file("user1/in/deep/a.yaml", b"param: 1\n")
    assert fid.startswith(env.state.data_root + "/")
    s3 = Path(env.state.data_root, "_s3/bucket/user1/calib.bin")
    s3.parent.mkdir(parents=True)
    s3.write_bytes(b"\x00calib")
    client = env.client()
    download_to(client, fid, tmp_path / "a.yaml")
    download_to(client, "s3://bucket/user1/calib.bin", tmp_path / "calib.bin")
    assert (tmp_path / "a.yaml").read_bytes() == b"param: 1\n"
    assert (tmp_path / "calib.bin").read_bytes() == b"\x00calib"


def test_a_missing_forbidden_or_unsendable_file_is_a_transfer_error(
    env: Env, tmp_path: Path
) -> None:
    client = env.client(retry_s=0.5)
    with pytest.raises(TransferError, match="404"):
        download_to(client, env.state.data_root + "/nope.bin", tmp_path / "x")
    with pytest.raises(TransferError, match="403"):
        download_to(client, "/etc/passwd", tmp_path / "x")
    Path(env.state.data_root, "adir").mkdir()
    # a directory: 200 for the URL, then 500 on download, which retrying never cures
    with pytest.raises(TransferError, match="fails to send this file"):
        download_to(client, env.state.data_root + "/adir", tmp_path / "x")
    r = requests.get(
        f"{env.mock.url}/files/{env.state.data_root}/../x/url",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert r.status_code in (403, 404)


def test_upload_lands_at_type_dir_base_path_filename_and_overwrites(
    env: Env, tmp_path: Path
) -> None:
    job = env.submit(["true"])
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    f = tmp_path / "model.pt"
    f.write_bytes(b"v1")
    upload_from(client, jid, f, UploadType.artifact, "ckpt/1")
    f.write_bytes(b"v2")
    upload_from(client, jid, f, UploadType.artifact, "ckpt/1")
    landed = Path(job.paths_upload["artifact"], "ckpt/1/model.pt")
    assert landed.read_bytes() == b"v2"


def test_the_upload_routes_refuse_bad_types_escaping_paths_strangers_and_odd_names(
    env: Env, tmp_path: Path
) -> None:
    env.submit(["true"])
    client = env.client(retry_s=0.3)
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{env.mock.url}/jobs/{jid}/files/url"
    assert (
        requests.post(
            url, params={"type": "bogus", "base_path": ""}, headers=headers, timeout=5
        ).status_code
        == 422
    )
    assert (
        requests.post(
            url, params={"type": "output", "base_path": "/abs"}, headers=headers, timeout=5
        ).status_code
        == 403
    )
    assert (
        requests.post(
            url, params={"type": "output", "base_path": "a/../.."}, headers=headers, timeout=5
        ).status_code
        == 403
    )
    r = requests.post(
        f"{env.mock.url}/jobs/999/files/url",
        params={"type": "output", "base_path": ""},
        headers=headers,
        timeout=5,
    )
    assert r.status_code == 500  # not 404
    # without base_path the upload URL fails
    req = requests.post(url, params={"type": "output"}, headers=headers, timeout=5).json()
    r = requests.post(
        req["url"], headers=req["headers"], files={"file": ("x.txt", b"x")}, timeout=5
    )
    assert r.status_code == 422
    # file names must be plain (unlike the real server, which would write outside)
    req = requests.post(
        url, params={"type": "output", "base_path": ""}, headers=headers, timeout=5
    ).json()
    r = requests.post(req["url"], headers=req["headers"], files={"file": ("..", b"x")}, timeout=5)
    assert r.status_code == 400


def test_s3_upload_is_a_presigned_post_and_lands_under_the_s3_directory(
    env: Env, tmp_path: Path
) -> None:
    # Given a job whose uploads go to S3
    job = env.submit_raw(decode_job(), paths_upload=env.paths_upload(s3=True))
    client = env.client()
    jid = next(iter(client.claim_jobs(claim_offer()).jobs))
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
    env.client().claim_jobs(claim_offer())
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
    env.client().claim_jobs(claim_offer())
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
        headers=WORKER_HEADERS,
        timeout=5,
    )
    assert r.status_code == 403


# --- the internal routes need the API key ---------------------------------------------------
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


# --- fault injection ---------------------------------------------------------------------------
def test_client_rides_out_500s_429s_drops_and_slow_answers(env: Env) -> None:
    env.submit(["true"])
    env.state.set_faults(Faults(fail_next=[500, 429, 0, 503, 0]))
    jobs = env.client(retry_s=20).claim_jobs(claim_offer())
    assert len(jobs.jobs) == 1
    env.state.set_faults(
        Faults(error_rate=0.3, throttle_rate=0.1, drop_rate=0.1, delay_s=0.01, seed=7)
    )
    client = env.client(retry_s=20)
    jid = next(iter(jobs.jobs))
    for _ in range(20):
        client.put_status(jid, JobStatus.running)
    assert env.state.requests_seen > 21


def test_a_claim_fails_while_the_api_is_down_and_works_once_it_is_back(env: Env) -> None:
    env.state.set_faults(Faults(down_for_s=1.0))
    with pytest.raises(ApiUnavailable):
        env.client(retry_s=0.3).claim_jobs(claim_offer())
    assert env.client(retry_s=5).claim_jobs(claim_offer()).jobs == {}


def test_an_outage_lasts_its_length_when_the_wall_clock_steps(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 60 s outage, and then the box's wall clock stepped 2 minutes ahead (a clock sync on
    # a fresh CI machine stepped it once and cut a 10-minute outage short by 6 s)
    env.state.set_faults(Faults(down_for_s=60))
    stepped = types.SimpleNamespace(time=lambda: time.time() + 120, monotonic=time.monotonic)
    monkeypatch.setattr("mock_api.state.time", stepped)
    # Then requests are still dropped: the outage is timed on the monotonic clock
    assert env.state.next_fault()[1] == 0
    # And it ends when its length has passed on that clock
    monkeypatch.setattr(stepped, "monotonic", lambda: time.monotonic() + 61)
    assert env.state.next_fault()[1] is None


def test_a_422_answer_is_raised_as_api_rejected(env: Env) -> None:
    with pytest.raises(ApiRejected, match="422"):
        env.client().session.call("GET", "/jobs", what="claim", name="claim")
