"""The real client against mock_api over real HTTP on 127.0.0.1: every endpoint, each error class."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from fetcher.api.auth import CognitoLogin, FixedToken
from fetcher.api.client import WorkerApi
from fetcher.api.http import Http
from fetcher.errors import ApiRejected, ApiUnavailable, AuthError, JobGone, TransferError
from fetcher.models import ClaimOffer, HardwareSpecs, JobStatus, UploadType
from mock_api.server import free_port
from mock_api.state import Faults
from tests.helpers import TOKEN, Env, download_to, statuses, upload_from, wait_for


def api(env: Env, token: str = TOKEN, retry_s: float = 3.0) -> WorkerApi:
    return WorkerApi(env.mock.url, FixedToken(token), Http(retry_s=retry_s, max_backoff_s=0.2))


def offer(**kw: object) -> ClaimOffer:
    values: dict[str, object] = {"memory": 4000, "cpu_cores": 4}
    values.update(kw)
    return ClaimOffer(**values)


# --- claiming: matching and ordering ------------------------------------------------------------
def test_claim_returns_the_queue_id_and_moves_the_job_to_pulled(env: Env) -> None:
    job = env.submit(["true"])
    jobs = api(env).claim_jobs(offer()).jobs
    assert list(jobs) == [str(job.id)]
    assert jobs[str(job.id)].meta.job_id == 4242  # meta.job_id is not the queue id
    assert job.status == JobStatus.pulled and job.worker == "worker"
    assert api(env).claim_jobs(offer()).jobs == {}


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
    assert bool(api(env).claim_jobs(offer(**worker_offer)).jobs) is given


def test_claim_order_is_group_then_priority_then_age(env: Env) -> None:
    old_low = env.submit(["true"], priority=0)
    new_high = env.submit(["true"], priority=5)
    grouped = env.submit(["true"], priority=0, group="lab")
    got = list(api(env).claim_jobs(offer(groups=["lab"], limit=3)).jobs)
    assert got == [str(grouped.id), str(new_high.id), str(old_low.id)]


def test_claim_older_than_and_missing_memory(env: Env) -> None:
    env.submit(["true"])
    assert api(env).claim_jobs(offer(older_than=3600)).jobs == {}
    resp = requests.get(
        f"{env.mock.url}/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert resp.status_code == 422


# --- auth -------------------------------------------------------------------------------------
def test_missing_bad_and_non_worker_tokens(env: Env) -> None:
    r = requests.get(f"{env.mock.url}/jobs?memory=1", timeout=5)
    assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
    r = requests.get(
        f"{env.mock.url}/jobs?memory=1", headers={"Authorization": "Basic x"}, timeout=5
    )
    assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
    with pytest.raises(AuthError, match="Not verified"):
        api(env, token="wrong").claim_jobs(offer())
    env.state.add_user("bob", "pw-of-bob", ["users"])
    login = CognitoLogin(
        Http(), env.mock.url, "bob", "pw-of-bob", endpoint=env.mock.url + "/_cognito/"
    )
    with pytest.raises(AuthError, match="workers"):
        WorkerApi(env.mock.url, login, Http()).claim_jobs(offer())


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
    jid = next(iter(client.claim_jobs(offer()).jobs))
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
        WorkerApi(env.mock.url, login, Http()).claim_jobs(offer())


# --- status -----------------------------------------------------------------------------------
def test_status_put_is_204_and_recorded_with_details(env: Env) -> None:
    job = env.submit(["true"])
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
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


def test_deleted_job_answers_404_then_500(env: Env) -> None:
    env.submit(["true"])
    client = api(env, retry_s=0.3)
    jid = next(iter(client.claim_jobs(offer()).jobs))
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
        api(env).get_status("999")


def test_queued_hands_the_job_back_and_not_to_the_same_worker(env: Env) -> None:
    other = env.add_worker("other")
    job = env.submit(["true"])
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    client.put_status(jid, JobStatus.queued, "does not fit")
    assert client.claim_jobs(offer()).jobs == {}
    assert list(api(env, token=other).claim_jobs(offer()).jobs) == [jid]
    with pytest.raises(JobGone):  # no longer this worker's
        client.put_status(jid, JobStatus.running)
    assert job.worker == "other"


def test_silent_jobs_are_requeued_retry_limit_times_then_failed(env: Env) -> None:
    # the retry limit counts re-queues after a timeout (the real server's MAX_RETRIES), not claims
    env.state.config.failure_timeout_s = 0.3
    env.state.config.check_interval_s = 0.1
    env.state.config.retry_limit = 1
    job = env.submit(["true"])
    client = api(env)
    client.claim_jobs(offer())
    wait_for(lambda: job.status == JobStatus.queued, 5, "re-queue")
    api(env, token=env.add_worker("other")).claim_jobs(offer())
    wait_for(lambda: job.status == JobStatus.error, 5, "failure after retry limit")
    assert statuses(job) == ["queued", "pulled", "queued", "pulled", "error"]
    assert job.retries == 1 and job.history[-1]["runtime_details"] == "max retries reached"


# --- files ------------------------------------------------------------------------------------
def test_download_by_store_path_and_s3_id(env: Env, tmp_path: Path) -> None:
    fid = env.input_file("user1/in/deep/a.yaml", b"param: 1\n")
    assert fid.startswith(env.state.data_root + "/")
    s3 = Path(env.state.data_root, "_s3/bucket/user1/calib.bin")
    s3.parent.mkdir(parents=True)
    s3.write_bytes(b"\x00calib")
    client = api(env)
    download_to(client, fid, tmp_path / "a.yaml")
    download_to(client, "s3://bucket/user1/calib.bin", tmp_path / "calib.bin")
    assert (tmp_path / "a.yaml").read_bytes() == b"param: 1\n"
    assert (tmp_path / "calib.bin").read_bytes() == b"\x00calib"


def test_download_errors(env: Env, tmp_path: Path) -> None:
    client = api(env, retry_s=0.5)
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
    client = api(env)
    jid = next(iter(client.claim_jobs(offer()).jobs))
    f = tmp_path / "model.pt"
    f.write_bytes(b"v1")
    upload_from(client, jid, f, UploadType.artifact, "ckpt/1")
    f.write_bytes(b"v2")
    upload_from(client, jid, f, UploadType.artifact, "ckpt/1")
    landed = Path(job.paths_upload["artifact"], "ckpt/1/model.pt")
    assert landed.read_bytes() == b"v2"


def test_upload_refusals(env: Env, tmp_path: Path) -> None:
    env.submit(["true"])
    client = api(env, retry_s=0.3)
    jid = next(iter(client.claim_jobs(offer()).jobs))
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


# --- fault injection ---------------------------------------------------------------------------
def test_client_rides_out_500s_429s_drops_and_slow_answers(env: Env) -> None:
    env.submit(["true"])
    env.state.set_faults(Faults(fail_next=[500, 429, 0, 503, 0]))
    jobs = api(env, retry_s=20).claim_jobs(offer())
    assert len(jobs.jobs) == 1
    env.state.set_faults(
        Faults(error_rate=0.3, throttle_rate=0.1, drop_rate=0.1, delay_s=0.01, seed=7)
    )
    client = api(env, retry_s=20)
    jid = next(iter(jobs.jobs))
    for _ in range(20):
        client.put_status(jid, JobStatus.running)
    assert env.state.requests_seen > 21


def test_api_down_then_back(env: Env) -> None:
    env.state.set_faults(Faults(down_for_s=1.0))
    with pytest.raises(ApiUnavailable):
        api(env, retry_s=0.3).claim_jobs(offer())
    assert api(env, retry_s=5).claim_jobs(offer()).jobs == {}


def test_rejected_is_raised_for_422(env: Env) -> None:
    with pytest.raises(ApiRejected, match="422"):
        api(env).session.call("GET", "/jobs", what="claim", name="claim")


# --- the mock-api command ---------------------------------------------------------------------
def test_mock_api_command_starts_and_serves(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mock_api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-root",
        str(tmp_path / "d"),
        "--worker-token",
        "tok-123456",
        "--api-key",
        "k",
        "--user",
        "u:pw",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url), 20, "mock-api to answer")
        client = WorkerApi(url, FixedToken("tok-123456"), Http(retry_s=2))
        assert client.claim_jobs(offer()).jobs == {}
        login = CognitoLogin(Http(), url, "u", "pw", endpoint=url + "/_cognito/")
        assert WorkerApi(url, login, Http()).claim_jobs(offer()).jobs == {}
    finally:
        proc.terminate()
        proc.wait(10)


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/access_info", timeout=1).status_code == 200
    except requests.RequestException:
        return False
