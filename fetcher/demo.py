"""`fetcher demo`: one real job, end to end, through the real fetcher against an in-process mock API."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import tarfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import docker.errors

from fetcher.errors import ConfigError
from fetcher.models import (
    AppSpecs,
    HandlerSpecs,
    HardwareSpecs,
    JobSpecs,
    PathsUploadSpecs,
    SubmittedJob,
)
from fetcher.settings import Settings

if TYPE_CHECKING:
    from mock_api.state import MockJob

log = logging.getLogger(__name__)

DEMO_IMAGE = "decode-fetcher-demo/busybox:1"
DEMO_JOB_REPO = "decode-fetcher-demo/job"  # the job image made from the fetcher's own image
# The same path on the host and in the fetcher's container (`-v /tmp/fetcher-demo:/tmp/fetcher-demo`).
# A fixed name in /tmp: on a host, fresh_workdir refuses one that is a symlink or someone else's.
DEMO_DIR = Path("/tmp/fetcher-demo")  # noqa: S108
BUSYBOX = Path("/bin/busybox")
_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")


def busybox_image(client: Any, tag: str = DEMO_IMAGE) -> str:
    """A 2 MB job image made from the host's static busybox with `docker import` (no registry)."""
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        log.debug("demo: building %s", tag)
    # a dynamically linked busybox would not run in an image without libc
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        raise ConfigError(
            "demo: a static /bin/busybox is needed to make the demo image; install it "
            "(apt-get install busybox-static) or set DEMO_IMAGE to a local image with /bin/sh"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "files"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), "bin/busybox")
        for applet in (
            "sh",
            "cat",
            "echo",
            "mkdir",
            "wc",
            "date",
            "find",
            "head",
            "sleep",
            "ls",
            "tr",
            "sort",
        ):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    client.api.import_image_from_data(
        buf.getvalue(),
        repository=tag.split(":")[0],
        tag=tag.split(":")[1],
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    return tag


def own_container(client: Any) -> Any | None:
    """The container this process runs in (found through the engine), or None on a host.

    Docker bind-mounts /etc/hostname (and resolv.conf, hosts) from /var/lib/docker/containers/<id>/,
    which shows in /proc/self/mountinfo even when --hostname was set; HOSTNAME is the fallback."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += _CONTAINER_ID.findall(Path("/proc/self/mountinfo").read_text())
    if Path("/.dockerenv").exists() and os.environ.get("HOSTNAME"):
        candidates.append(os.environ["HOSTNAME"])
    for cid in dict.fromkeys(candidates):
        try:
            return client.containers.get(cid)
        except docker.errors.DockerException:
            continue
    return None


def host_path(container: Any, path: Path) -> Path:
    """Where `path` (inside `container`) is on the Docker host: job containers are made by the host's
    engine and mount host paths. Raises ConfigError when `path` is not on a mount from the host."""
    best: tuple[Path, Path] | None = None
    for mount in container.attrs.get("Mounts") or []:
        dest, source = Path(mount.get("Destination", "")), mount.get("Source")
        inside = source and (path == dest or dest in path.parents)
        if inside and (best is None or len(dest.parts) > len(best[0].parts)):
            best = (dest, Path(source))
    if best is None:
        raise ConfigError(
            f"demo: {path} is not a host directory mounted into this container; run it as "
            f"docker run --rm -v /var/run/docker.sock:/var/run/docker.sock -v {path}:{path} "
            "decode-fetcher demo"
        )
    return best[1] / path.relative_to(best[0])


def image_from_own(client: Any, container: Any) -> str:
    """A job image made from the fetcher's own image, without a registry: the same files (a shell
    and the usual tools), with the fetcher's ENTRYPOINT, HEALTHCHECK and daemon label taken off
    (job images define no ENTRYPOINT)."""
    base = container.attrs["Image"]  # sha256:...
    tag = f"{DEMO_JOB_REPO}:{base.removeprefix('sha256:')[:12]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        log.info("demo: making the job image %s from the fetcher's own image", tag)
    dockerfile = (
        f"FROM {base}\n"
        "ENTRYPOINT []\n"
        'CMD ["/bin/sh"]\n'
        "HEALTHCHECK NONE\n"
        'LABEL org.decode-opencloud.fetcher.daemon=""\n'
        "WORKDIR /\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)
    return tag


def demo_image(client: Any, container: Any | None) -> str:
    """DEMO_IMAGE when set; in a container the fetcher's own image; on a host a busybox import."""
    if os.environ.get("DEMO_IMAGE"):
        return os.environ["DEMO_IMAGE"]
    return image_from_own(client, container) if container is not None else busybox_image(client)


def demo_fetcher_id(host_root: Path) -> str:
    """One fetcher id per demo directory: a demo elsewhere on the engine is not this one's leftover."""
    return "demo-" + hashlib.sha256(str(host_root).encode()).hexdigest()[:8]


def fresh_workdir(root: Path, on_host: bool) -> IO[str]:
    """Lock `root` for this demo (one at a time) and empty what an earlier demo left. `root` itself
    stays: in the fetcher's container it is the mount point."""
    root.mkdir(parents=True, exist_ok=True)
    if on_host and (root.is_symlink() or root.stat().st_uid != os.getuid()):
        raise ConfigError(f"demo: {root} is a symlink or another user's; choose --workdir")
    lock = (root / ".demo.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"demo: another demo is running in {root}") from None
    for name in ("jobs", "store"):
        shutil.rmtree(root / name, ignore_errors=True)
    return lock


def run_demo(workdir: Path | None = None) -> int:
    """One sample job, end to end, in `workdir` (default /tmp/fetcher-demo). Returns 0 if finished."""
    from fetcher.daemon import build_daemon, connect_docker
    from mock_api.server import MockServer
    from mock_api.state import MockState

    root = (workdir or DEMO_DIR).absolute()
    client = connect_docker()
    container = own_container(client)
    host_root = host_path(container, root) if container is not None else root
    image = demo_image(client, container)
    with contextlib.closing(fresh_workdir(root, on_host=container is None)):
        base, data = root / "jobs", root / "store"
        base.mkdir()
        token = secrets.token_urlsafe(16)
        state = MockState(str(data), secrets.token_urlsafe(8), [token])
        param = data / "user1/config/param.yaml"
        param.parent.mkdir(parents=True)
        param.write_text("emitter_density: 0.5\nepochs: 3\n")
        out = data / "user1/results"
        with MockServer(state) as server:
            job = state.submit(
                SubmittedJob(
                    job=demo_job(image, param),
                    paths_upload=PathsUploadSpecs(
                        output=str(out / "output"),
                        log=str(out / "log"),
                        artifact=str(out / "artifact"),
                    ),
                )
            )
            log.info(
                "demo: mock API on %s, job %d submitted with image %s", server.url, job.id, image
            )
            settings = demo_settings(server.url, token, base, host_root)
            build_daemon(settings, exit_when_idle=True, docker_client=client).run()
    show_result(job, out, root, host_root)
    return 0 if job.status.value == "finished" else 1


def demo_settings(api_url: str, token: str, base: Path, host_root: Path) -> Settings:
    return Settings(
        _env_file=None,
        api_url=api_url,
        access_token=token,
        path_base=base,
        path_host_base=host_root / "jobs",
        poll_interval_s=1,
        keepalive_interval_s=5,
        exit_idle_polls=1,  # the job is in the queue before the fetcher starts
        image_pull_policy="never",
        shm_size="64m",
        fetcher_id=demo_fetcher_id(host_root),
    )


def show_result(job: MockJob, out: Path, root: Path, host_root: Path) -> None:
    print()
    print(f"job {job.id}: {job.status.value} ({job.history[-1]['runtime_details']})")
    seen = [h["status"] for h in job.history]
    changes = [st for i, st in enumerate(seen) if i == 0 or st != seen[i - 1]]
    print(f"statuses: {' -> '.join(changes)} ({len(seen) - 1} updates, keep-alives included)")
    where = f" (on the host: {host_root / out.relative_to(root)})" if host_root != root else ""
    print(f"outputs are in {out}{where}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size} bytes)")


def demo_job(image: str, param: Path) -> JobSpecs:
    """A small job shaped like DECODE's training: it finds its config under /files, and writes into
    /files/model and /files/output, which it does not create (the fetcher does, as upstream)."""
    return JobSpecs(
        app=AppSpecs(
            cmd=[
                "echo \"training with $(cat $(find /files/config -name '*.yaml' | head -n 1) | wc -l) settings,"
                ' seed $DECODE_SEED"',
                "&&",
                "for e in 1 2 3; do echo epoch $e; done > /files/model/history.txt",
                "&&",
                "date > /files/output/finished_at.txt",
                "&&",
                "echo demo job done",
            ],
            env={"DECODE_SEED": "42"},
        ),
        handler=HandlerSpecs(
            image_url=image,
            files_down={"config/param.yaml": str(param)},
            files_up={"output": "output", "log": "log", "artifact": "model"},
        ),
        hardware=HardwareSpecs(cpu_cores=1, memory=256),
    )
