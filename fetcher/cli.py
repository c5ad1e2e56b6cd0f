"""The commands: `run` (the daemon), `check` (doctor), `info` (what would be offered), `status`,
`health`, `pause`/`resume`, `gpu probe`/`gpu release`, `demo`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

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
    from fetcher.gpu.probe import offer_view
    from fetcher.host import detect_host_and_board, open_nvml
    from fetcher.pool import ResourcePool
    from fetcher.quarantine import Quarantine

    settings = _settings(args)
    nvml = open_nvml()
    try:
        quarantine = Quarantine(1, quiet=True)
        host, board = detect_host_and_board(connect_docker().info(), settings, nvml, quarantine)
        pool = ResourcePool.from_settings(host, settings, board)
        print(json.dumps(offer_view(host, pool, board, settings.group_list), indent=2))
    finally:
        nvml.close()
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


def _path_base(args: argparse.Namespace) -> Path:
    from fetcher.status import path_base_from_environment

    path_base = (
        Path(args.path_base) if args.path_base else path_base_from_environment(args.env_file)
    )
    if path_base is None:
        raise ConfigError("PATH_BASE: missing (set it, or pass --path-base)")
    return path_base


def cmd_status(args: argparse.Namespace) -> int:
    from fetcher.status import main

    return main(_path_base(args), args.json)


def cmd_pause(args: argparse.Namespace) -> int:
    from fetcher import control
    from fetcher.statedir import StateDir

    pause = control.pause(StateDir.of(_path_base(args)), args.reason)
    print(f"fetcher: {pause.describe()}; running jobs go on; `fetcher resume` to claim again")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from fetcher import control
    from fetcher.statedir import StateDir

    was = control.resume(StateDir.of(_path_base(args)))
    print("fetcher: claiming again" if was else "fetcher: was not paused")
    return 0


def cmd_gpu_probe(args: argparse.Namespace) -> int:
    from fetcher.gpu.probe import probe, render

    info = probe(foreign_max_mb=args.foreign_max_mb)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0 if info["nvml"] == "ok" else 1


def cmd_gpu_release(args: argparse.Namespace) -> int:
    from fetcher import control
    from fetcher.statedir import StateDir

    keys = None if "all" in args.which else list(args.which)
    control.request_release(StateDir.of(_path_base(args)), keys)
    what = "every quarantine" if keys is None else ", ".join(keys)
    print(f"fetcher: release of {what} asked; the daemon lifts it at its next pass")
    return 0


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
    _with_path_base(status).set_defaults(fn=cmd_status)
    _admin_commands(sub)
    demo = sub.add_parser(
        "demo", help="run one sample job end to end against an in-process mock API"
    )
    demo.add_argument(
        "--workdir", default=None, help="where to keep the demo's files (default: a temp dir)"
    )
    demo.set_defaults(fn=cmd_demo)
    return p


def _with_path_base(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sp.add_argument("--path-base", default=None, help="default: PATH_BASE (environment, .env)")
    sp.add_argument("--env-file", default=None, help="read PATH_BASE from this file")
    return sp


def _admin_commands(sub: Any) -> None:
    pause = _with_path_base(sub.add_parser("pause", help="claim no new job; running jobs go on"))
    pause.add_argument("--reason", default=None, help="shown in the log and `fetcher status`")
    pause.set_defaults(fn=cmd_pause)
    _with_path_base(sub.add_parser("resume", help="claim jobs again")).set_defaults(fn=cmd_resume)
    gpu = sub.add_parser("gpu", help="the GPUs: probe what NVML shows, release a quarantine")
    gsub = gpu.add_subparsers(dest="gpu_command", required=True)
    probe = gsub.add_parser("probe", help="what NVML shows, health, and what a job would get")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    probe.add_argument(
        "--foreign-max-mb",
        type=int,
        default=int(os.environ.get("GPU_FOREIGN_MEMORY_MAX_MB", "256")),
        help="GPU_FOREIGN_MEMORY_MAX_MB (default: the environment's, else 256)",
    )
    probe.set_defaults(fn=cmd_gpu_probe)
    release = _with_path_base(gsub.add_parser("release", help="lift quarantines"))
    release.add_argument("which", nargs="+", metavar="UUID|box|all", help="what to release")
    release.set_defaults(fn=cmd_gpu_release)


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
