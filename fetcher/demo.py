"""`fetcher demo`: one real job, end to end, through the real fetcher against an in-process mock API."""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import docker.errors

from fetcher.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_IMAGE = "decode-fetcher-demo/busybox:1"
BUSYBOX = Path("/bin/busybox")


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


def run_demo(workdir: Path | None = None) -> int:
    from fetcher.daemon import build_daemon, connect_docker
    from fetcher.models import (
        AppSpecs,
        HandlerSpecs,
        HardwareSpecs,
        JobSpecs,
        PathsUploadSpecs,
        SubmittedJob,
    )
    from fetcher.settings import Settings
    from mock_api.server import MockServer
    from mock_api.state import MockState

    root = workdir or Path(tempfile.mkdtemp(prefix="fetcher-demo-"))
    if workdir is not None and root.exists():
        shutil.rmtree(root)
    base, data = root / "jobs", root / "store"
    base.mkdir(parents=True)
    client = connect_docker()
    image = os.environ.get("DEMO_IMAGE") or busybox_image(client)
    token = secrets.token_urlsafe(16)
    state = MockState(str(data), secrets.token_urlsafe(8), [token])
    param = data / "user1/config/param.yaml"
    param.parent.mkdir(parents=True)
    param.write_text("emitter_density: 0.5\nepochs: 3\n")
    spec = JobSpecs(
        app=AppSpecs(
            cmd=[
                "cd /files",
                "&&",
                "mkdir -p output/model log",
                "&&",
                "echo \"training with $(cat $(find /files/config -name '*.yaml' | head -n 1) | wc -l) settings,"
                ' seed $DECODE_SEED"',
                "&&",
                "for e in 1 2 3; do echo epoch $e; done > output/model/history.txt",
                "&&",
                "date > output/finished_at.txt",
                "&&",
                "echo demo job done",
            ],
            env={"DECODE_SEED": "42"},
        ),
        handler=HandlerSpecs(
            image_url=image,
            files_down={"config/param.yaml": str(param)},
            files_up={"output": "output", "log": "log"},
        ),
        hardware=HardwareSpecs(cpu_cores=1, memory=256),
    )
    out = data / "user1/results"
    with MockServer(state) as server:
        job = state.submit(
            SubmittedJob(
                job=spec,
                paths_upload=PathsUploadSpecs(output=str(out / "output"), log=str(out / "log")),
            )
        )
        log.info("demo: mock API on %s, job %d submitted with image %s", server.url, job.id, image)
        settings = Settings(
            _env_file=None,
            api_url=server.url,
            access_token=token,
            path_base=base,
            poll_interval_s=1,
            keepalive_interval_s=5,
            image_pull_policy="never",
            shm_size="64m",
            fetcher_id="demo",
        )
        build_daemon(settings, exit_when_idle=True, docker_client=client).run()
    print()
    print(f"job {job.id}: {job.status.value} ({job.history[-1]['runtime_details']})")
    print(f"statuses: {' -> '.join(h['status'] for h in job.history)}")
    print(f"outputs are in {out}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size} bytes)")
    return 0 if job.status.value == "finished" else 1
