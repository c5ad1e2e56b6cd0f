"""Poetry scripts around the fetcher's image: docker-build, docker-run, docker-stop, docker-cleanup."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from fetcher.demo import DEMO_JOB_REPO

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "decode-fetcher"
DAEMON_LABEL = "org.decode-opencloud.fetcher.daemon=1"


def docker_cli() -> str:
    # the engine's own client first: another `docker` on PATH may be a newer client without buildx
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def sh(*cmd: str, capture: bool = False) -> str:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    return result.stdout if capture else ""


# Poetry groups the image carries: the fetcher (`main`), and the mock API (`mock`) that `fetcher demo`
# runs in-process, so that `docker run ... decode-fetcher demo` works on a box with no account yet.
IMAGE_GROUPS = ("main", "mock")


def image_requirements(groups: tuple[str, ...] = IMAGE_GROUPS) -> list[str]:
    """The pinned dependencies of `groups` from poetry.lock, with their markers."""
    lock = tomllib.loads((ROOT / "poetry.lock").read_text())
    reqs = []
    for pkg in lock["package"]:
        if set(groups) & set(pkg.get("groups", ["main"])):
            marker = f" ; {pkg['markers']}" if isinstance(pkg.get("markers"), str) else ""
            reqs.append(f"{pkg['name']}=={pkg['version']}{marker}")
    return reqs


def image_python(base: str) -> tuple[int, int]:
    """The Python version of the base image (its `python3`), to fetch wheels that fit it."""
    out = sh(
        docker_cli(),
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        base,
        "-c",
        "import sys; print(*sys.version_info[:2])",
        capture=True,
    )
    major, minor = out.split()
    return int(major), int(minor)


def wheel_commands(out: Path, python: tuple[int, int], reqs_file: Path) -> list[list[str]]:
    """pip commands that fill `out` with wheels for `python`: built by this interpreter when the
    versions match, else downloaded as binary wheels for that version (pydantic-core is compiled)."""
    pip = [sys.executable, "-m", "pip"]
    common = ["--quiet", "--disable-pip-version-check", "--no-deps"]
    project = [*pip, "wheel", *common, "--wheel-dir", str(out), str(ROOT)]
    if python == sys.version_info[:2]:
        return [[*pip, "wheel", *common, "--wheel-dir", str(out), "-r", str(reqs_file)], project]
    tag = f"{python[0]}{python[1]}"
    arch = platform.machine()
    platforms = [f"manylinux_2_{v}_{arch}" for v in (17, 28, 34)] + [f"manylinux2014_{arch}"]
    download = [*pip, "download", *common, "--dest", str(out), "--only-binary=:all:"]
    download += ["--python-version", f"{python[0]}.{python[1]}", "--implementation", "cp"]
    download += ["--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none"]
    for plat in platforms:
        download += ["--platform", plat]
    return [[*download, "-r", str(reqs_file)], project]


def wheelhouse(python: tuple[int, int] | None = None) -> Path:
    """./wheelhouse: every wheel the image installs, and requirements.txt naming them (pinned)."""
    out = ROOT / "wheelhouse"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    reqs = out / "requirements.txt"
    reqs.write_text("\n".join(image_requirements()) + "\n")
    for cmd in wheel_commands(out, python or sys.version_info[:2], reqs):
        sh(*cmd)
    with reqs.open("a") as fh:
        fh.write(f"decode-fetcher=={version()}\n")
    return out


def build(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="docker-build", description="Build the fetcher's Docker image")
    p.add_argument(
        "--base",
        default=os.environ.get("FETCHER_BASE_IMAGE", "python:3.11-slim"),
        help="image with python3 and venv (default python:3.11-slim, or $FETCHER_BASE_IMAGE)",
    )
    p.add_argument("--tag", default=f"{IMAGE}:{version()}")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    wheelhouse(image_python(args.base))
    sh(
        docker_cli(),
        "build",
        "--build-arg",
        f"PYTHON_IMAGE={args.base}",
        "--build-arg",
        f"VERSION={version()}",
        "-t",
        args.tag,
        "-t",
        f"{IMAGE}:latest",
        str(ROOT),
    )
    print(f"built {args.tag}")
    return 0


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="docker-run", description="Run the fetcher's image on this box"
    )
    p.add_argument("--env-file", default=".env")
    p.add_argument(
        "--path-base", default=os.environ.get("PATH_BASE"), help="host directory for job files"
    )
    p.add_argument("--image", default=f"{IMAGE}:latest")
    p.add_argument("--name", default="decode-fetcher")
    p.add_argument("--no-gpus", action="store_true", help="do not pass --gpus all")
    p.add_argument(
        "--docker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for docker run (repeatable), e.g. --docker-arg=--network=host",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.path_base:
        print(
            "docker-run: set PATH_BASE (or --path-base) to the host directory for job files",
            file=sys.stderr,
        )
        return 2
    host_base = str(Path(args.path_base).resolve())
    Path(host_base).mkdir(parents=True, exist_ok=True)
    cmd = [
        docker_cli(),
        "run",
        "-d",
        "--name",
        args.name,
        "--restart",
        "always",  # after an engine crash Docker does not start `unless-stopped` ones again
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        f"{host_base}:/data",
        "--add-host",
        "host.docker.internal:host-gateway",
    ]
    if Path(args.env_file).is_file():
        cmd += ["--env-file", args.env_file]
    cmd += ["-e", "PATH_BASE=/data", "-e", f"PATH_HOST_BASE={host_base}"]
    if not args.no_gpus:
        cmd += ["--gpus", "all"]
    sh(*cmd, *args.docker_arg, args.image)
    return 0


def stop(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="docker-stop",
        description="Stop and remove the fetcher's containers on this box, running or exited",
    )
    p.add_argument("-t", "--time", default="10", help="seconds docker waits before SIGKILL")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FILTER",
        help="only containers that also match this docker ps filter (repeatable), e.g. name=lab-a",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    filters = [arg for f in [f"label={DAEMON_LABEL}", *args.filter] for arg in ("--filter", f)]
    # -a: one that exited (an engine restart ends a container without a restart policy with 255)
    # is removed too, or it would stay on the box for good
    ids = sh(docker_cli(), "ps", "-aq", *filters, capture=True).split()
    if ids:
        sh(docker_cli(), "stop", "-t", args.time, *ids)  # a no-op for one that is not running
        sh(docker_cli(), "rm", *ids)
    else:
        print("no fetcher container on this box")
    return 0


def cleanup(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="docker-cleanup", description="Remove fetcher images and dangling images"
    ).parse_args(sys.argv[1:] if argv is None else argv)
    images = []
    for repo in (IMAGE, DEMO_JOB_REPO):
        images += sh(docker_cli(), "images", "-q", repo, capture=True).split()
    if images:
        sh(docker_cli(), "rmi", "-f", *sorted(set(images)))
    dangling = sh(docker_cli(), "images", "-q", "--filter", "dangling=true", capture=True).split()
    if dangling:
        sh(docker_cli(), "rmi", *sorted(set(dangling)))
    shutil.rmtree(ROOT / "wheelhouse", ignore_errors=True)
    return 0
