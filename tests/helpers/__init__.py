"""Shared test helpers, one place for all of them (fixtures are in tests/conftest.py, stand-ins for
the outside world in tests/fakes/):

- `env`: one test's world: the mock API on real HTTP, settings for a test, job submission, waiting
  for a condition, a job's statuses as the server recorded them
- `daemon`: the daemon run until idle (always with a hang guard) or in a thread while the test
  looks; a real `fetcher run` process; what a fetcher leaves on the engine and under PATH_BASE
- `hostile`: a worker-facing API that answers whatever a test scripts, a job spec and settings for
  it, a job command that leaves a tree 3000 directories deep
- `api`: the client in unit tests (against `responses` or a raw HTTP server of the test's own),
  plain-file downloads and uploads
- `metrics`: a scrape of /metrics
- `nvml`: a table-driven pynvml stand-in (GPU-less boxes, four A100s)
"""

from tests.helpers.api import (
    API,
    BEARER,
    FIXED_TOKEN,
    Answer,
    authorizations,
    body_of,
    download_to,
    query,
    serving,
    trickle,
    upload_from,
    worker_api,
)
from tests.helpers.daemon import (
    DaemonThread,
    daemon_in_thread,
    fetcher_containers,
    fetcher_environ,
    fetcher_process,
    nothing_left,
    only_state_left,
    output_of,
    run_until_idle,
    running_containers,
    starts_again,
)
from tests.helpers.env import (
    API_KEY,
    IMAGE,
    REGISTRY_IMAGE,
    SESSION,
    TOKEN,
    WORKER_HEADERS,
    Env,
    claim_offer,
    decode_job,
    fetcher_id,
    finals,
    last_details,
    sequence,
    statuses,
    wait_for,
)
from tests.helpers.hostile import (
    DEEP_TREE,
    HostileServer,
    Route,
    deep_base,
    hostile_job,
    hostile_settings,
)
from tests.helpers.metrics import Series, scrape, value
from tests.helpers.nvml import FakeNvml, four_gpus

__all__ = [
    "API",
    "API_KEY",
    "BEARER",
    "DEEP_TREE",
    "FIXED_TOKEN",
    "IMAGE",
    "REGISTRY_IMAGE",
    "SESSION",
    "TOKEN",
    "WORKER_HEADERS",
    "Answer",
    "DaemonThread",
    "Env",
    "FakeNvml",
    "HostileServer",
    "Route",
    "Series",
    "authorizations",
    "body_of",
    "claim_offer",
    "daemon_in_thread",
    "decode_job",
    "deep_base",
    "download_to",
    "fetcher_containers",
    "fetcher_environ",
    "fetcher_id",
    "fetcher_process",
    "finals",
    "four_gpus",
    "hostile_job",
    "hostile_settings",
    "last_details",
    "nothing_left",
    "only_state_left",
    "output_of",
    "query",
    "run_until_idle",
    "running_containers",
    "scrape",
    "sequence",
    "serving",
    "starts_again",
    "statuses",
    "trickle",
    "upload_from",
    "value",
    "wait_for",
    "worker_api",
]
