"""The commands: `run` (the daemon), `check` (doctor), `info` (resources), `status`, `health`, `demo`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fetcher import __version__
from fetcher.errors import ConfigError
from fetcher.logs import setup_logging
from fetcher.settings import Settings, load_settings

log = logging.getLogger("fetcher")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "env_file", None):
        if not Path(args.env_file).is_file():
            raise ConfigError(f"--env-file: {args.env_file} does not exist")
        overrides["_env_file"] = args.env_file
    return load_settings(**overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fetcher.daemon import build_daemon

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    daemon = build_daemon(settings, exit_when_idle=args.exit_when_idle, max_jobs=args.max_jobs)
    daemon.install_signal_handlers()  # before run: crash recovery can be interrupted too
    return daemon.run()


def cmd_info(args: argparse.Namespace) -> int:
    from fetcher.daemon import connect_docker
    from fetcher.host import detect_gpus, detect_host
    from fetcher.pool import ResourcePool

    settings = _settings(args)
    host = detect_host(connect_docker().info(), settings, detect_gpus())
    pool = ResourcePool.from_settings(host, settings)
    offer = pool.offer(settings.group_list)
    print(
        json.dumps(
            {
                "cpu_cores": host.cpu_cores,
                "memory_mb": host.memory_mb,
                "gpus": [g.__dict__ for g in host.gpus],
                "parallel_jobs": pool.max_jobs,
                "first_claim": offer.model_dump() if offer else None,
            },
            indent=2,
        )
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fetcher.check import run_checks

    settings = _settings(args)
    setup_logging("WARNING")
    return run_checks(settings)


def cmd_health(args: argparse.Namespace) -> int:
    from fetcher.daemon import heartbeat_age_s

    settings = _settings(args)
    age = heartbeat_age_s(settings)
    limit = max(3 * settings.poll_interval_s, 120.0)
    if age is None or age > limit:
        print(
            f"unhealthy: heartbeat {'missing' if age is None else f'{age:.0f} s old'} (limit {limit:.0f} s)"
        )
        return 1
    print(f"healthy: heartbeat {age:.0f} s old")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fetcher.status import main, path_base_from_environment

    path_base = (
        Path(args.path_base) if args.path_base else path_base_from_environment(args.env_file)
    )
    if path_base is None:
        raise ConfigError("PATH_BASE: missing (set it, or pass --path-base)")
    return main(path_base, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from fetcher.demo import run_demo

    setup_logging("INFO")
    return run_demo(Path(args.workdir) if args.workdir else None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fetcher", description="DECODE OpenCloud job fetcher")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the daemon: claim and run jobs until stopped")
    run.add_argument(
        "--exit-when-idle", action="store_true", help="exit 0 once no job is available"
    )
    run.add_argument(
        "--max-jobs", type=int, default=None, metavar="N", help="claim at most N jobs, then exit"
    )
    run.set_defaults(fn=cmd_run)
    for name, fn, text in (
        ("check", cmd_check, "diagnose the set-up: API, login, Docker, GPUs, paths"),
        ("info", cmd_info, "print the resources that would be offered to the server"),
        ("health", cmd_health, "exit 0 if the daemon's heartbeat is fresh (HEALTHCHECK)"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.set_defaults(fn=fn)
    for sp in (run, *(sub.choices[n] for n in ("check", "info", "health"))):
        sp.add_argument(
            "--env-file", default=None, help="read settings from this file instead of ./.env"
        )
    status = sub.add_parser(
        "status", help="what the fetcher runs now, free resources, pending statuses, errors"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--path-base", default=None, help="default: PATH_BASE (environment, .env)")
    status.add_argument("--env-file", default=None, help="read PATH_BASE from this file")
    status.set_defaults(fn=cmd_status)
    demo = sub.add_parser(
        "demo", help="run one sample job end to end against an in-process mock API"
    )
    demo.add_argument(
        "--workdir", default=None, help="where to keep the demo's files (default: a temp dir)"
    )
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"fetcher: {exc}", file=sys.stderr)
        return 2


def run_daemon() -> int:
    """`poetry run run [--exit-when-idle] [--max-jobs N]`: the daemon."""
    return main(["run", *sys.argv[1:]])
