"""PATH_BASE/.fetcher: the fetcher's own state, and the one object that names each of its files.

    .fetcher/
      lock          flock held by the daemon: one fetcher per PATH_BASE
      id            this fetcher's id (FETCHER_ID unset): its containers carry it
      jobs.sqlite   the job store (fetcher.store): each job's phase, the reports to deliver
      heartbeat     touched every pass of the loop (`fetcher health`, `fetcher status`)
      images.json   the job images used, and when (image pruning)
      logs/<id>.log a running job's output (uploaded as container.log)
      paused        `fetcher pause`: no new claims until `fetcher resume` (kept across restarts)
      release       `fetcher gpu release`: quarantines to lift, taken by the daemon's next pass

The job directories themselves are PATH_BASE/<queue id>; the job cannot reach this directory.
"""

from __future__ import annotations

import fcntl
import logging
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fetcher.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateDir:
    path: Path

    @classmethod
    def of(cls, path_base: Path) -> StateDir:
        return cls(path_base / ".fetcher")

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    @property
    def id_file(self) -> Path:
        return self.path / "id"

    @property
    def store(self) -> Path:
        return self.path / "jobs.sqlite"

    @property
    def heartbeat(self) -> Path:
        return self.path / "heartbeat"

    @property
    def images(self) -> Path:
        return self.path / "images.json"

    @property
    def paused(self) -> Path:
        return self.path / "paused"

    @property
    def release(self) -> Path:
        return self.path / "release"

    def log_of(self, job_id: str) -> Path:
        """Where a job's output is kept while it runs (the job cannot reach it)."""
        return self.path / "logs" / f"{job_id}.log"

    def lock(self) -> IO[str]:
        """Take the state lock: one fetcher per PATH_BASE; a second one gets a clear error instead
        of fighting over jobs. The directory is made private to this user."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o700)
        fh = self.lock_file.open("w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"PATH_BASE: another fetcher is already using {self.path.parent}"
            ) from None
        return fh

    def identity(self, configured: str | None = None) -> str:
        """A stable id for this fetcher (FETCHER_ID, else kept in `id`), so that a restart finds
        its own leftovers."""
        if configured:
            return configured
        if not self.id_file.exists():
            self.id_file.write_text(secrets.token_hex(4))
        return self.id_file.read_text().strip()


def keep_to_ourselves(path_base: Path) -> None:
    """PATH_BASE grants group and others nothing. Jobs run as root and write into their
    directories (0777, for whatever user the image runs as): a setuid-root program, or a file
    another job reads, must be out of every local user's reach. Containers do not need it: their
    bind mount starts at the job directory. Raises ConfigError if it cannot be done."""
    try:
        mode = stat.S_IMODE(path_base.stat().st_mode)
        if mode & 0o077:
            path_base.chmod(mode & ~0o077)
            log.warning(
                "worker: PATH_BASE %s was open to other users (%o); now %o",
                path_base,
                mode,
                mode & ~0o077,
            )
    except OSError as exc:
        raise ConfigError(f"PATH_BASE: cannot restrict {path_base} to this user: {exc}") from None
