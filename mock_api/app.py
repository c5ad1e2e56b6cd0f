"""The FastAPI app of the mock worker-facing API. Routes mirror the real server, odd parts included.

Worker-facing: GET /access_info, GET /jobs, PUT|GET /jobs/{id}/status, GET /files/{id}/url,
GET /files/{id}/download, POST /jobs/{id}/files/url, POST /jobs/{id}/files/upload. For the API's
own download and upload URLs the answer echoes the caller's `authorization` header, as the real
server does; `s3://` file ids and upload directories get pre-signed URLs of a fake S3 instead
(GET /_s3/{bucket}/{key}, POST /_s3/{bucket}), with no auth header.
Cognito stand-in: POST /_cognito/ (InitiateAuth). With `x-api-key` (else 401): POST /_jobs
(submission; the job is kept as the JSON received), GET /_jobs, GET /_jobs/{id},
DELETE /_jobs/{id} (user deletion), POST /_faults, POST /_config, POST /_reset.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from fetcher.models import FileHTTPRequest, JobStatus
from mock_api.state import ApiFailure, Faults, MockConfig, MockState, Token


class DroppedConnection(Exception):
    """Raised mid-response to make the server cut the connection (a fault)."""


class _HideDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


logging.getLogger("uvicorn.error").addFilter(_HideDrops())

WORKER_PREFIXES = ("/jobs", "/files", "/access_info")


class FaultMiddleware:
    """Injects the configured faults into worker-facing routes (never into /_ routes)."""

    def __init__(self, app: ASGIApp, state: MockState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(WORKER_PREFIXES):
            await self.app(scope, receive, send)
            return
        delay, status = self.state.next_fault()
        if delay:
            await asyncio.sleep(delay)
        if status is None:
            await self.app(scope, receive, send)
        elif status == 0:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-length", b"1000"),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            raise DroppedConnection
        else:
            body = b"Internal Server Error" if status >= 500 else b'{"detail":"Too Many Requests"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _worker(request: Request, authorization: Annotated[str | None, Header()] = None) -> Token:
    state: MockState = request.app.state.mock
    return state.authenticate(authorization)


def _admin(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """The internal routes' key check: wrong or missing `x-api-key` -> 401, as on the real server."""
    state: MockState = request.app.state.mock
    if not x_api_key or not secrets.compare_digest(x_api_key.encode(), state.api_key.encode()):
        raise ApiFailure(401, "unauthorized")


def _echoed(authorization: str | None) -> dict[str, str]:
    """The headers of a request to the API's own URL: the caller's, echoed (as the real server)."""
    return {"authorization": authorization} if authorization is not None else {}


Worker = Annotated[Token, Depends(_worker)]
Admin = Depends(_admin)


def create_app(state: MockState) -> FastAPI:
    app = FastAPI(title="mock worker-facing API")
    app.state.mock = state
    app.add_middleware(FaultMiddleware, state=state)

    @app.exception_handler(ApiFailure)
    async def _failure(_: Request, exc: ApiFailure) -> Response:
        if exc.status == 500 and exc.detail is None:
            return PlainTextResponse("Internal Server Error", status_code=500)
        if exc.cognito_type:
            return JSONResponse(
                {"__type": exc.cognito_type, "message": exc.detail}, status_code=exc.status
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    # --- worker-facing ------------------------------------------------------------------------
    @app.get("/access_info")
    def access_info() -> dict[str, Any]:
        return {
            "cognito": {
                "user_pool_id": "mock-pool",
                "client_id": "mock-client",
                "region": "mock-region",
            }
        }

    @app.get("/jobs")
    def get_jobs(
        token: Worker,
        memory: int,
        cpu_cores: int = 1,
        gpu_mem: int = 0,
        gpu_model: str | None = None,
        gpu_archi: str | None = None,
        groups: Annotated[list[str] | None, Query()] = None,
        limit: int = 1,
        older_than: int = 0,
    ) -> dict[str, Any]:
        given = state.claim(
            token.user,
            memory=memory,
            cpu_cores=cpu_cores,
            gpu_mem=gpu_mem,
            gpu_model=gpu_model,
            gpu_archi=gpu_archi,
            groups=groups or [],
            limit=limit,
            older_than=older_than,
        )
        return {str(k): v for k, v in given.items()}  # each job's JSON as it was submitted

    @app.put("/jobs/{job_id}/status", status_code=204)
    def put_status(
        token: Worker, job_id: int, status: JobStatus, runtime_details: str | None = None
    ) -> Response:
        state.put_status(token.user, job_id, status, runtime_details)
        return Response(status_code=204)

    @app.get("/jobs/{job_id}/status")
    def get_status(_: Worker, job_id: int) -> str:
        return state.get_status(job_id).value

    @app.get("/files/{file_id:path}/url")
    def file_url(
        _: Worker,
        file_id: str,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> FileHTTPRequest:
        base = str(request.base_url).rstrip("/")
        if file_id.startswith("s3://"):
            path = state.s3_path(file_id)
            if not path.exists():
                raise ApiFailure(404, "File not found")
            sig = secrets.token_hex(16)
            with state.lock:
                state.s3_grants.add(sig)
            url = f"{base}/_s3/{quote(file_id.removeprefix('s3://'))}?X-Amz-Expires=3600&X-Amz-Signature={sig}"
            return FileHTTPRequest(method="get", url=url)
        path = state.check_in_store(file_id, "file id")
        if not path.exists():
            raise ApiFailure(404, "File not found")
        return FileHTTPRequest(
            method="get",
            url=f"{base}/files/{quote(file_id)}/download",
            headers=_echoed(authorization),
        )

    @app.get("/files/{file_id:path}/download")
    def download(_: Worker, file_id: str) -> Response:
        path = state.check_in_store(file_id, "file id")
        if not path.is_file():
            raise ApiFailure(500) if path.exists() else ApiFailure(404, "File not found")
        rate = state.faults.download_bytes_per_s
        if rate:
            return _throttled(path, rate)
        return FileResponse(path, filename=path.name)

    @app.get("/_s3/{key:path}")
    def s3_get(key: str, signature: Annotated[str, Query(alias="X-Amz-Signature")]) -> Response:
        with state.lock:
            if signature not in state.s3_grants:
                raise ApiFailure(403, "SignatureDoesNotMatch")
        path = state.s3_path("s3://" + key)
        if not path.is_file():
            raise ApiFailure(404, "NoSuchKey")
        return FileResponse(path)

    @app.post("/jobs/{job_id}/files/url", status_code=201)
    def upload_url(
        token: Worker,
        job_id: int,
        request: Request,
        type: str,
        base_path: str = "",
        authorization: Annotated[str | None, Header()] = None,
    ) -> FileHTTPRequest:
        path = state.upload_dir(token.user, job_id, type, base_path)
        base = str(request.base_url).rstrip("/")
        if path.startswith("s3://"):  # a pre-signed POST: data fields, then the file
            bucket = path.removeprefix("s3://").partition("/")[0]
            policy, prefix = state.grant_s3_post(job_id, type, base_path, path)
            return FileHTTPRequest(
                method="post",
                url=f"{base}/_s3/{quote(bucket)}",
                data={"key": prefix + "${filename}", "policy": policy},
            )
        # the API's own upload route, with the query as sent (no base_path: the upload fails)
        query = f"?{request.url.query}" if request.url.query else ""
        return FileHTTPRequest(
            method="post",
            url=f"{base}/jobs/{job_id}/files/upload{query}",
            headers=_echoed(authorization),
        )

    @app.post("/jobs/{job_id}/files/upload", status_code=201)
    async def upload(
        token: Worker, job_id: int, type: str, request: Request, base_path: str | None = None
    ) -> None:
        if base_path is None:
            raise ApiFailure(422, "base_path: field required")
        directory = Path(state.upload_dir(token.user, job_id, type, base_path))
        form = await request.form(max_part_size=64 * 1024 * 1024)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiFailure(422, "file: field required")
            await _store(state, upload, job_id, type, base_path, directory)
        finally:
            await form.close()

    @app.post("/_s3/{bucket}", status_code=204)
    async def s3_post(bucket: str, request: Request) -> Response:
        form = await request.form(max_part_size=64 * 1024 * 1024)
        try:
            items = list(form.multi_items())
            names = [k for k, _ in items]
            if "file" not in names:
                raise ApiFailure(400, "no field 'file'")
            if names[-1] != "file":
                raise ApiFailure(400, "the 'file' field must come after the data fields")
            fields = {k: str(v) for k, v in items if not isinstance(v, UploadFile)}
            with state.lock:
                grant = state.upload_grants.get(fields.get("policy", ""))
            if grant is None:
                raise ApiFailure(403, "AccessDenied: policy unknown")
            job_id, kind, base_path, granted = grant
            key = fields.get("key", "")
            if not f"{bucket}/{key}".startswith(granted) or not key.endswith("${filename}"):
                raise ApiFailure(403, "AccessDenied: key outside the policy")
            upload = form["file"]
            assert isinstance(upload, UploadFile)
            prefix = key.removesuffix("${filename}").rstrip("/")
            directory = state.s3_path(f"s3://{bucket}/{prefix}".rstrip("/"))
            await _store(state, upload, job_id, kind, base_path, directory)
        finally:
            await form.close()
        return Response(status_code=204)

    @app.post("/_cognito/")
    async def cognito(
        request: Request, x_amz_target: Annotated[str | None, Header()] = None
    ) -> Response:
        if x_amz_target != "AWSCognitoIdentityProviderService.InitiateAuth":
            raise ApiFailure(400, f"unknown X-Amz-Target {x_amz_target}")
        body = await request.json()
        return JSONResponse(state.initiate_auth(body), media_type="application/x-amz-json-1.1")

    # --- submission and inspection ----------------------------------------------------------
    @app.post("/_jobs", status_code=201, dependencies=[Admin])
    async def submit(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ApiFailure(422, "body: not JSON") from None
        return state.submit_raw(body).view()

    @app.get("/_jobs", dependencies=[Admin])
    def list_jobs() -> list[dict[str, Any]]:
        with state.lock:
            return [j.view() for j in state.jobs.values()]

    @app.get("/_jobs/{job_id}", dependencies=[Admin])
    def inspect_job(job_id: int) -> dict[str, Any]:
        with state.lock:
            return state._job(job_id).view()

    @app.delete("/_jobs/{job_id}", status_code=204, dependencies=[Admin])
    def delete_job(job_id: int) -> Response:
        state.delete(job_id)
        return Response(status_code=204)

    @app.post("/_faults", dependencies=[Admin])
    def set_faults(faults: Faults) -> Faults:
        state.set_faults(faults)
        return faults

    @app.post("/_config", dependencies=[Admin])
    def set_config(config: MockConfig) -> MockConfig:
        with state.lock:
            state.config = config
        return config

    @app.post("/_reset", status_code=204, dependencies=[Admin])
    def reset() -> Response:
        state.reset()
        return Response(status_code=204)

    return app


def _throttled(path: Path, rate: int) -> Response:
    """The file at `rate` bytes per second: storage as slow as a lab's cloud bucket."""
    chunk = max(rate // 20, 4096)

    async def body() -> AsyncIterator[bytes]:
        start = asyncio.get_running_loop().time()
        sent = 0
        with path.open("rb") as fh:
            while data := fh.read(chunk):
                yield data
                sent += len(data)
                ahead = sent / rate - (asyncio.get_running_loop().time() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    size = path.stat().st_size
    return StreamingResponse(body(), headers={"content-length": str(size)})


async def _store(
    state: MockState, upload: UploadFile, job_id: int, kind: str, base_path: str, directory: Path
) -> None:
    """Write an uploaded file to `<directory>/<filename>` (the same name again overwrites)."""
    if state.upload_gate is not None:
        await asyncio.to_thread(state.upload_gate, job_id)
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    dest = state.record_upload(job_id, kind, base_path, directory, upload.filename or "", size)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)


def data_file(state: MockState, relative: str, content: bytes) -> str:
    """Put an input file into the store (as users do); returns its file id."""
    path = Path(state.data_root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)
