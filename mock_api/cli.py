"""`mock-api`: run the mock worker-facing API in the foreground."""

from __future__ import annotations

import argparse
import logging

from mock_api.server import MockServer
from mock_api.state import MockState


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mock-api", description="Mock DECODE OpenCloud worker-facing API"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--data-root", required=True, help="file store; file ids begin with it as given")
    p.add_argument(
        "--worker-token", action="append", default=[], help="fixed worker token (repeatable)"
    )
    p.add_argument("--api-key", required=True, help="x-api-key for POST /_jobs and the /_ routes")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD[:GROUP,...]",
        help="a Cognito user for USERNAME/PASSWORD login (default group: workers)",
    )
    p.add_argument("--token-expiry-s", type=float, default=3600.0)
    p.add_argument("--failure-timeout-s", type=float, default=300.0)
    p.add_argument("--check-interval-s", type=float, default=60.0)
    p.add_argument(
        "--retry-limit",
        type=int,
        default=2,
        help="re-queues after a keep-alive timeout (MAX_RETRIES)",
    )
    p.add_argument(
        "--no-retry-different",
        action="store_true",
        help="let a worker claim a job it claimed before (RETRY_DIFFERENT=0)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    state = MockState(args.data_root, args.api_key, args.worker_token)
    state.config.token_expiry_s = args.token_expiry_s
    state.config.failure_timeout_s = args.failure_timeout_s
    state.config.check_interval_s = args.check_interval_s
    state.config.retry_limit = args.retry_limit
    state.config.retry_different = not args.no_retry_different
    for spec in args.user:
        name, _, rest = spec.partition(":")
        password, _, groups = rest.partition(":")
        state.add_user(name, password, groups.split(",") if groups else ["workers"])
    server = MockServer(state, args.host, args.port)
    logging.info("mock-api: serving on %s, data root %s", server.url, state.data_root)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
