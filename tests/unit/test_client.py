"""The API client against `responses`: each call, each error class, retries, token refresh, redaction."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from responses import matchers

from fetcher.api.auth import CognitoLogin, FixedToken
from fetcher.api.client import WorkerApi, fit_details
from fetcher.api.http import Http
from fetcher.errors import (
    ApiRejected,
    ApiUnavailable,
    AuthError,
    BadResponse,
    Interrupted,
    JobGone,
    TransferError,
)
from fetcher.logs import RedactingFilter
from fetcher.models import ClaimOffer, JobStatus, UploadType
from tests.helpers import download_to, upload_from

API = "http://api.test"
TOKEN = "fixed-token-0123456789"
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


def make_api(retry_s: float = 2.0) -> WorkerApi:
    return WorkerApi(API, FixedToken(TOKEN), Http(retry_s=retry_s, max_backoff_s=0.05))


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as r:
        yield r


def body_of(call: responses.Call) -> str:
    body = call.request.body
    return body.decode() if isinstance(body, bytes) else str(body)


def query(call: responses.Call) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(call.request.url)).query)


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
    result = make_api().claim_jobs(offer)
    q = query(rsps.calls[0])
    assert q["memory"] == ["8000"] and q["cpu_cores"] == ["4"] and q["gpu_mem"] == ["40960"]
    assert q["gpu_model"] == ["A100"] and q["gpu_archi"] == ["ampere"] and q["limit"] == ["2"]
    assert q["groups"] == ["lab", "other"]
    assert "gpu_memory" not in q
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert list(result.jobs) == ["17"]  # the queue id, not meta.job_id
    assert result.jobs["17"].meta.job_id == 4242
    assert result.jobs["17"].meta.model_extra == {"extra_key": {"x": 1}}


def test_claim_without_gpu_sends_gpu_mem_zero_and_no_model(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", json={})
    assert make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).jobs == {}
    q = query(rsps.calls[0])
    assert q["gpu_mem"] == ["0"] and "gpu_model" not in q and "groups" not in q


def test_claim_accepts_null_cmd_env_and_files(rsps: responses.RequestsMock) -> None:
    spec = json.loads(json.dumps(SPEC))
    spec["app"] = {"cmd": None, "env": None}
    spec["handler"]["files_down"] = None
    spec["handler"]["files_up"] = None
    rsps.get(f"{API}/jobs", json={"3": spec})
    job = make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).jobs["3"]
    assert job.app.cmd is None and job.handler.files_down is None


def test_malformed_job_spec_is_a_typed_error_naming_job_and_field(
    rsps: responses.RequestsMock,
) -> None:
    bad = json.loads(json.dumps(SPEC))
    del bad["handler"]["image_url"]
    rsps.get(f"{API}/jobs", json={"5": bad, "6": SPEC})
    result = make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))
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
        make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


# --- status -----------------------------------------------------------------------------------
def test_put_status_sends_status_and_details_and_accepts_empty_204(
    rsps: responses.RequestsMock,
) -> None:
    rsps.put(f"{API}/jobs/17/status", status=204, body="")
    make_api().put_status("17", JobStatus.error, "exit_code: 3\nboom")
    q = query(rsps.calls[0])
    assert q == {"status": ["error"], "runtime_details": ["exit_code: 3\nboom"]}


def test_put_status_404_means_the_job_is_gone(rsps: responses.RequestsMock) -> None:
    rsps.put(f"{API}/jobs/17/status", status=404, json={"detail": "Job not found"})
    with pytest.raises(JobGone):
        make_api().put_status("17", JobStatus.running)
    assert len(rsps.calls) == 1


def test_get_status_parses_the_json_string(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/17/status", json="running")
    assert make_api().get_status("17") == JobStatus.running


def test_long_runtime_details_keep_their_end_and_fit_a_url() -> None:
    details = "exit_code: 1\n" + "x" * 20000 + "\nLAST LINE"
    fitted = fit_details(details)
    assert fitted.endswith("LAST LINE") and len(fitted) < 7000


# --- retries and error classes -----------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses_are_retried_then_succeed(
    rsps: responses.RequestsMock, status: int
) -> None:
    rsps.put(f"{API}/jobs/1/status", status=status)
    rsps.put(f"{API}/jobs/1/status", status=status)
    rsps.put(f"{API}/jobs/1/status", status=204)
    make_api().put_status("1", JobStatus.running)
    assert len(rsps.calls) == 3


def test_connection_errors_are_retried(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/1/status", body=requests.ConnectionError("reset by peer"))
    rsps.get(f"{API}/jobs/1/status", body=requests.Timeout("slow"))
    rsps.get(f"{API}/jobs/1/status", json="queued")
    assert make_api().get_status("1") == JobStatus.queued


def test_retries_give_up_with_api_unavailable_within_the_budget(
    rsps: responses.RequestsMock,
) -> None:
    rsps.get(f"{API}/jobs/1/status", status=503)
    import time

    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match="HTTP 503"):
        make_api(retry_s=0.5).get_status("1")
    assert time.monotonic() - started < 2.0
    assert len(rsps.calls) > 2


@pytest.mark.parametrize("status", [400, 422])
def test_other_4xx_are_not_retried(rsps: responses.RequestsMock, status: int) -> None:
    rsps.put(f"{API}/jobs/1/status", status=status, json={"detail": "bad status"})
    with pytest.raises(ApiRejected, match="bad status"):
        make_api().put_status("1", JobStatus.running)
    assert len(rsps.calls) == 1


def test_fixed_token_401_is_an_auth_error_without_retry(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", status=401, json={"detail": "Not verified"})
    with pytest.raises(AuthError, match="Not verified"):
        make_api().claim_jobs(ClaimOffer(memory=1, cpu_cores=1))
    assert len(rsps.calls) == 1


def test_403_outside_workers_group_is_an_auth_error(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs", status=403, json={"detail": "Not a member of the 'workers' group"})
    with pytest.raises(AuthError, match="workers"):
        make_api().claim_jobs(ClaimOffer(memory=1, cpu_cores=1))


def test_retry_waits_stop_at_once_when_interrupted(rsps: responses.RequestsMock) -> None:
    rsps.get(f"{API}/jobs/1/status", status=503)
    stop = threading.Event()
    api = WorkerApi(API, FixedToken(TOKEN), Http(retry_s=60, max_backoff_s=30))
    threading.Timer(0.2, stop.set).start()
    import time

    started = time.monotonic()
    with pytest.raises(Interrupted):
        api.session.call("GET", "/jobs/1/status", what="get status", name="status", interrupt=stop)
    assert time.monotonic() - started < 5


# --- files ------------------------------------------------------------------------------------
def test_download_follows_the_api_url_with_bearer_streamed(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(
        f"{API}/files/data/u/a.yaml/url",
        json={
            "method": "get",
            "url": f"{API}/files/data/u/a.yaml/download",
            "headers": {},
            "data": {},
        },
    )
    rsps.get(f"{API}/files/data/u/a.yaml/download", body=b"x" * 3_000_000)
    size = download_to(make_api(), "data/u/a.yaml", tmp_path / "a.yaml")
    assert size == 3_000_000 and (tmp_path / "a.yaml").stat().st_size == 3_000_000
    assert rsps.calls[1].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_download_of_presigned_s3_url_sends_no_bearer(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.amazonaws.com/u/calib.bin?X-Amz-Signature=abc"
    rsps.get(
        f"{API}/files/s3://bucket/u/calib.bin/url",
        json={"method": "get", "url": s3, "headers": {"x-amz-meta": "1"}, "data": {}},
    )
    rsps.get(s3, body=b"calib")
    download_to(make_api(), "s3://bucket/u/calib.bin", tmp_path / "c.bin")
    assert "Authorization" not in rsps.calls[1].request.headers
    assert rsps.calls[1].request.headers["x-amz-meta"] == "1"
    assert (tmp_path / "c.bin").read_bytes() == b"calib"


def test_download_of_missing_file_is_a_transfer_error(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.get(f"{API}/files/data/nope/url", status=404, json={"detail": "File not found"})
    with pytest.raises(TransferError, match="404"):
        download_to(make_api(), "data/nope", tmp_path / "x")


def test_download_refuses_dotdot_file_ids(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=r"\.\."):
        download_to(make_api(), "data/../../etc/passwd", tmp_path / "x")


def test_broken_download_starts_again(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    url = {"method": "get", "url": f"{API}/dl", "headers": {}, "data": {}}
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=requests.ConnectionError("reset"))
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=b"complete")
    download_to(make_api(), "f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"complete"


def test_upload_is_multipart_with_data_first_then_file_and_always_sends_base_path(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.post(
        f"{API}/jobs/17/files/url",
        status=201,
        match=[matchers.query_param_matcher({"type": "output", "base_path": ""})],
        json={
            "method": "post",
            "url": "https://s3.test/bucket",
            "headers": {},
            "data": {"key": "out/${filename}", "policy": "p0l1cy"},
        },
    )
    rsps.post("https://s3.test/bucket", status=204)
    f = tmp_path / "result.h5"
    f.write_bytes(b"RESULT")
    upload_from(make_api(), "17", f, UploadType.output, "")
    body = rsps.calls[1].request.body
    raw = body.read() if hasattr(body, "read") else body  # type: ignore[union-attr]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    assert (
        text.index('name="key"')
        < text.index('name="policy"')
        < text.index('name="file"; filename="result.h5"')
    )
    assert "RESULT" in text
    assert "Authorization" not in rsps.calls[1].request.headers


def test_upload_sends_sub_path_as_base_path(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    rsps.post(
        f"{API}/jobs/17/files/url",
        status=201,
        match=[matchers.query_param_matcher({"type": "log", "base_path": "a/b"})],
        json={"method": "post", "url": f"{API}/up", "headers": {}, "data": {}},
    )
    rsps.post(f"{API}/up", status=201, body="null")
    f = tmp_path / "x.log"
    f.write_text("log")
    upload_from(make_api(), "17", f, UploadType.log, "a/b")
    assert rsps.calls[1].request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("base_path", ["/abs", "a/../../x", ".."])
def test_upload_refuses_unsafe_base_paths(tmp_path: Path, base_path: str) -> None:
    f = tmp_path / "x"
    f.write_text("x")
    with pytest.raises(ValueError, match="relative"):
        upload_from(make_api(), "1", f, UploadType.output, base_path)


def test_upload_of_a_job_not_ours_gives_up_as_unavailable_500(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.post(f"{API}/jobs/9/files/url", status=500, body="Internal Server Error")
    f = tmp_path / "x"
    f.write_text("x")
    with pytest.raises(ApiUnavailable):
        upload_from(make_api(retry_s=0.3), "9", f, UploadType.output, "")


# --- Cognito login ----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cognito_api(clock: Clock, endpoint: str | None = "http://cognito.test/") -> WorkerApi:
    http = Http(retry_s=1, max_backoff_s=0.01)
    return WorkerApi(
        API,
        CognitoLogin(http, API, "alice", "s3cret-password", endpoint=endpoint, clock=clock),
        http,
    )


def auth_result(
    token: str, refresh: str | None = "refresh-tok-1", expires: int = 3600
) -> dict[str, object]:
    result: dict[str, object] = {"IdToken": token, "ExpiresIn": expires}
    if refresh:
        result["RefreshToken"] = refresh
    return {"AuthenticationResult": result}


def access_info(rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{API}/access_info",
        json={"cognito": {"user_pool_id": "p", "client_id": "cid", "region": "eu-central-1"}},
    )


def test_login_uses_user_password_auth_and_the_id_token(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post(
        "http://cognito.test/",
        json=auth_result("id-token-AAAA"),
        match=[
            matchers.header_matcher(
                {
                    "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
                    "Content-Type": "application/x-amz-json-1.1",
                }
            )
        ],
    )
    rsps.get(f"{API}/jobs/1/status", json="running")
    assert cognito_api(Clock()).get_status("1") == JobStatus.running
    body = json.loads(body_of(rsps.calls[1]))
    assert body == {
        "AuthFlow": "USER_PASSWORD_AUTH",
        "ClientId": "cid",
        "AuthParameters": {"USERNAME": "alice", "PASSWORD": "s3cret-password"},
    }
    assert rsps.calls[2].request.headers["Authorization"] == "Bearer id-token-AAAA"


def test_default_endpoint_is_the_regions_cognito(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("https://cognito-idp.eu-central-1.amazonaws.com/", json=auth_result("id-1"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    cognito_api(Clock(), endpoint=None).get_status("1")


def test_token_is_refreshed_before_expiry(rsps: responses.RequestsMock) -> None:
    clock = Clock()
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-1", expires=3600))
    rsps.post("http://cognito.test/", json=auth_result("id-2", refresh=None))
    rsps.get(f"{API}/jobs/1/status", json="running")
    api = cognito_api(clock)
    api.get_status("1")
    clock.now += 3560  # within a minute of expiry
    api.get_status("1")
    refresh = json.loads(body_of(rsps.calls[3]))
    assert refresh["AuthFlow"] == "REFRESH_TOKEN_AUTH"
    assert refresh["AuthParameters"] == {"REFRESH_TOKEN": "refresh-tok-1"}
    assert rsps.calls[4].request.headers["Authorization"] == "Bearer id-2"


def test_401_logs_in_again_once_then_retries(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-old"))
    rsps.get(f"{API}/jobs/1/status", status=401, json={"detail": "Not verified"})
    rsps.post("http://cognito.test/", json=auth_result("id-new"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    assert cognito_api(Clock()).get_status("1") == JobStatus.running
    assert json.loads(body_of(rsps.calls[3]))["AuthFlow"] == "USER_PASSWORD_AUTH"
    assert rsps.calls[4].request.headers["Authorization"] == "Bearer id-new"


def test_second_401_after_relogin_is_an_auth_error(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-1"))
    rsps.get(f"{API}/jobs/1/status", status=401, json={"detail": "Not verified"})
    with pytest.raises(AuthError):
        cognito_api(Clock()).get_status("1")


def test_wrong_password_is_an_auth_error_without_the_password(rsps: responses.RequestsMock) -> None:
    access_info(rsps)
    rsps.post(
        "http://cognito.test/",
        status=400,
        json={"__type": "NotAuthorizedException", "message": "Incorrect username or password."},
    )
    with pytest.raises(AuthError) as info:
        cognito_api(Clock()).get_status("1")
    assert "Incorrect username or password" in str(info.value)
    assert "s3cret-password" not in str(info.value)


# --- secrets never in logs --------------------------------------------------------------------
def test_secrets_are_redacted_from_log_lines_and_tracebacks(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    access_info(rsps)
    rsps.post("http://cognito.test/", json=auth_result("id-token-SECRET-VALUE"))
    rsps.get(f"{API}/jobs/1/status", json="running")
    cognito_api(Clock()).get_status("1")
    caplog.handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.propagate = True
    logger.warning(
        "oops token=%s password=%s url=%s",
        "id-token-SECRET-VALUE",
        "s3cret-password",
        "https://s3/x?X-Amz-Signature=deadbeef&a=1",
    )
    try:
        raise RuntimeError("failed with refresh-tok-1")  # noqa: TRY301
    except RuntimeError:
        logger.exception("traceback")
    text = caplog.text
    assert "id-token-SECRET-VALUE" not in text and "s3cret-password" not in text
    assert "deadbeef" not in text and "refresh-tok-1" not in text
    assert "***" in text


def test_error_messages_do_not_carry_presigned_query_strings(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.test/k?X-Amz-Signature=topsecretsig"
    rsps.get(f"{API}/files/k/url", json={"method": "get", "url": s3, "headers": {}, "data": {}})
    rsps.get(s3, body=requests.ConnectionError("boom"))
    with pytest.raises(ApiUnavailable) as info:
        download_to(make_api(retry_s=0.2), "k", tmp_path / "k")
    assert "topsecretsig" not in str(info.value)


# --- what a hostile or odd server can send -------------------------------------------------------
@pytest.mark.parametrize(
    "queue_id", ["", ".", "..", "../x", ".fetcher", "a/b", "/etc", "007", "-1", "1 ", "٣", "1\n"]
)
def test_a_queue_id_that_is_not_a_small_integer_is_refused_at_the_boundary(
    rsps: responses.RequestsMock, queue_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.get(f"{API}/jobs", json={queue_id: SPEC, "12": SPEC})
    result = make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))
    assert list(result.jobs) == ["12"] and result.invalid == []
    assert len(result.refused) == 1
    [line] = [r.getMessage() for r in caplog.records if "queue id" in r.getMessage()]
    assert "not a small integer" in line and "\n" not in line


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"7": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deep"),
        (b"\xff\xfe not json", "not JSON"),
        (b"{" + b'"k": 1, ' * 10 + b"}", "not JSON"),
    ],
)
def test_an_answer_that_cannot_be_decoded_is_a_bad_response(
    rsps: responses.RequestsMock, body: bytes, why: str
) -> None:
    rsps.get(f"{API}/jobs", body=body)
    with pytest.raises(BadResponse, match=why):
        make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


def test_an_answer_larger_than_the_limit_is_a_bad_response(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fetcher.api.http as http_module

    monkeypatch.setattr(http_module, "MAX_ANSWER_BYTES", 1000)
    rsps.get(f"{API}/jobs", body=b'{"1": "' + b"x" * 5000 + b'"}')
    with pytest.raises(BadResponse, match="larger than"):
        make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1))


def test_an_invalid_spec_is_one_short_line_even_for_a_huge_key(
    rsps: responses.RequestsMock,
) -> None:
    bad = json.loads(json.dumps(SPEC))
    bad["handler"]["files_up"] = {"x" * 5000: "out"}
    rsps.get(f"{API}/jobs", json={"5": bad})
    [err] = make_api().claim_jobs(ClaimOffer(memory=100, cpu_cores=1)).invalid
    line = f"invalid job spec: {err.field}: {err.problem}"
    assert len(line) < 400 and "\n" not in line and "handler.files_up" in line


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


def test_a_gzip_encoded_download_is_stored_as_sent(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    import gzip

    payload = gzip.compress(b"calibration " * 1000)
    rsps.get(
        f"{API}/files/f.mat.gz/url",
        json={"method": "get", "url": f"{API}/dl/f", "headers": {}, "data": {}},
    )
    rsps.get(
        f"{API}/dl/f",
        body=payload,
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(payload))},
        auto_calculate_content_length=False,
    )
    size = download_to(make_api(), "f.mat.gz", tmp_path / "f.mat.gz")
    assert size == len(payload) and (tmp_path / "f.mat.gz").read_bytes() == payload


def test_a_short_download_is_started_again(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    url = {"method": "get", "url": f"{API}/dl", "headers": {}, "data": {}}
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(
        f"{API}/dl",
        body=b"part",
        headers={"Content-Length": "10"},
        auto_calculate_content_length=False,
    )
    rsps.get(f"{API}/files/f/url", json=url)
    rsps.get(f"{API}/dl", body=b"0123456789")
    download_to(make_api(), "f", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_a_single_try_is_made_with_retry_s_zero(rsps: responses.RequestsMock) -> None:
    rsps.put(f"{API}/jobs/3/status", status=500, body="Internal Server Error")
    with pytest.raises(ApiUnavailable):
        make_api(retry_s=30).put_status("3", JobStatus.finished, retry_s=0)
    assert len(rsps.calls) == 1


def test_a_file_the_api_fails_to_send_is_a_transfer_error_after_a_few_tries(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    # Given a file id the server lists but cannot send (a directory: 200 on /url, 500 on download)
    url = {"method": "get", "url": f"{API}/files/d/download", "headers": {}, "data": {}}
    for _ in range(3):
        rsps.get(f"{API}/files/d/url", json=url)
        rsps.get(f"{API}/files/d/download", status=500, body="Internal Server Error")
    # Then it is the input's problem after three tries, not an outage to ride out for 15 minutes
    with pytest.raises(TransferError, match="fails to send this file"):
        download_to(make_api(retry_s=60), "d", tmp_path / "d")
    assert len(rsps.calls) == 6


def test_an_s3_500_is_retried_as_a_transient_failure(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    s3 = "https://bucket.s3.test/k?X-Amz-Signature=sig"
    url = {"method": "get", "url": s3, "headers": {}, "data": {}}
    for _ in range(4):
        rsps.get(f"{API}/files/k/url", json=url)
        rsps.get(s3, status=500, body="InternalError")
    rsps.get(f"{API}/files/k/url", json=url)
    rsps.get(s3, body=b"finally")
    download_to(make_api(retry_s=60), "k", tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == b"finally"
