"""The real DECODE WorkerAPI on loopback, for the transfer benchmark (`scripts/bench_transfer.py
--api-url`): its local file store, an SQLite queue, a fixed bearer token. Not part of the fetcher;
it runs in a virtual environment of the WorkerAPI's own, never in ours.

    # a snapshot of ries-lab/DECODE_Cloud_WorkerAPI (the `fetch` tool) cloned to /tmp/workerapi
    python3 -c 'import tomllib; [print(f"{p["name"]}=={p["version"]}") for p in
      tomllib.load(open("/tmp/workerapi/poetry.lock", "rb"))["package"]]' > /tmp/wapi-pins.txt
    python3 -m venv /tmp/workerapi-venv
    /tmp/workerapi-venv/bin/pip install -c /tmp/wapi-pins.txt fastapi fastapi-cloudauth \
      fastapi-utils python-multipart uvicorn sqlalchemy boto3 python-dotenv dict-hash deprecated \
      httpx requests typing-inspect
    FILESYSTEM=local USER_DATA_ROOT_PATH=/tmp/wapi-data QUEUE_DB_URL=sqlite:////tmp/wapi.db \
      INTERNAL_API_KEY_SECRET=bench-key WAPI_TOKEN=bench-token-123456 WAPI_PORT=8001 \
      PYTHONPATH=/tmp/workerapi /tmp/workerapi-venv/bin/python scripts/workerapi_loopback.py &
    poetry run python -m scripts.bench_transfer --api-url http://127.0.0.1:8001 \
      --data-root /tmp/wapi-data --token bench-token-123456 --api-key bench-key

What is changed, as the WorkerAPI's own tests change it: its Cognito check (`current_user_dep`)
accepts `Bearer $WAPI_TOKEN` as user `worker1` of group `workers` (401 otherwise); the status
forwarding to the user-facing API (`job_tracking.update_job`) does nothing; the download of
Cognito's keys at import is skipped (no network). With WAPI_CHUNK_STATS=FILE, the sizes of the
chunks its multipart parser is fed are appended to FILE (one line per upload, by power of two).
"""

# ruff: noqa: E402 - the WorkerAPI's modules are imported after the patches they need

from __future__ import annotations

import collections
import json
import os
from typing import Any

import fastapi_cloudauth.verification as verification
from fastapi import Header, HTTPException

verification.JWKS._refresh_keys = lambda _self: None  # no Cognito here

from workerfacing_api.crud import job_tracking

job_tracking.update_job = lambda *a, **k: None  # no user-facing API here

from workerfacing_api.dependencies import GroupClaims, current_user_dep
from workerfacing_api.main import workerfacing_app

TOKEN = os.environ["WAPI_TOKEN"]


def fixed_user(authorization: str | None = Header(None)) -> Any:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "Not authenticated")
    if authorization.removeprefix("Bearer ") != TOKEN:
        raise HTTPException(401, "Not verified")
    claims = {
        "cognito:username": "worker1",
        "cognito:email": "w@example.com",
        "cognito:groups": ["workers"],
    }
    return GroupClaims(**claims)


workerfacing_app.dependency_overrides[current_user_dep] = fixed_user


def count_chunks(stats: str) -> None:
    """Append the sizes of the chunks python-multipart is fed, per upload, to `stats`."""
    import python_multipart.multipart as mp

    write, finalize = mp.MultipartParser.write, mp.MultipartParser.finalize

    def counting_write(self: Any, data: bytes) -> Any:
        self.__dict__.setdefault("_sizes", collections.Counter())[len(data).bit_length()] += 1
        return write(self, data)

    def counting_finalize(self: Any) -> Any:
        sizes = self.__dict__.get("_sizes", {})
        with open(stats, "a") as fh:  # noqa: PTH123
            fh.write(json.dumps({f"<{2**k}": n for k, n in sorted(sizes.items())}) + "\n")
        return finalize(self)

    mp.MultipartParser.write = counting_write  # type: ignore[method-assign]
    mp.MultipartParser.finalize = counting_finalize  # type: ignore[method-assign]


if __name__ == "__main__":
    import uvicorn

    if os.environ.get("WAPI_CHUNK_STATS"):
        count_chunks(os.environ["WAPI_CHUNK_STATS"])
    port = int(os.environ.get("WAPI_PORT", "8001"))
    uvicorn.run(workerfacing_app, host="127.0.0.1", port=port, log_level="warning")
