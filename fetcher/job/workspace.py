"""The job directory: where it is for the fetcher and for the engine's host, path safety, cleanup."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fetcher.api.client import check_relative_path
from fetcher.errors import InvalidJobSpec
from fetcher.models import JobSpecs

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTAINER_MOUNT = "/files"


@dataclass(frozen=True)
class Workspace:
    job_id: str
    path: Path  # the job directory as the fetcher sees it: PATH_BASE/<queue id>
    host_path: Path  # the same directory as the Docker engine's host sees it (bind-mount source)

    @classmethod
    def for_job(cls, job_id: str, base: Path, host_base: Path) -> Workspace:
        """Raises InvalidJobSpec if the queue id cannot be a directory name."""
        if not JOB_ID.match(job_id):
            raise InvalidJobSpec(job_id, "queue id", "must be letters, digits, '-' or '_'")
        return cls(job_id, base / job_id, host_base / job_id)

    def inside(self, relative: str, field: str) -> Path:
        """`relative` under the job directory; absolute or escaping paths raise InvalidJobSpec."""
        try:
            check_relative_path(relative, "path")
        except ValueError as exc:
            raise InvalidJobSpec(self.job_id, field, str(exc)) from None
        target = (self.path / relative).resolve()
        if not target.is_relative_to(self.path.resolve()):
            raise InvalidJobSpec(self.job_id, field, f"path {relative!r} leaves the job directory")
        return target

    def validate(self, spec: JobSpecs) -> None:
        """Check every path of the spec before anything is written. Raises InvalidJobSpec."""
        for rel, file_id in (spec.handler.files_down or {}).items():
            self.inside(rel, f"handler.files_down[{rel!r}]")
            if ".." in file_id.split("/"):
                raise InvalidJobSpec(
                    self.job_id, f"handler.files_down[{rel!r}]", "file id contains '..'"
                )
        for kind, rel in (spec.handler.files_up or {}).items():
            self.inside(rel, f"handler.files_up[{kind.value!r}]")

    def create(self) -> None:
        if self.path.exists():  # a leftover of an earlier try of the same job
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def remove(self) -> bool:
        """Remove the job directory; False if some of it could not be removed. Never raises."""
        if not self.path.exists():
            return True
        try:
            shutil.rmtree(self.path)
        except OSError as exc:
            log.warning(
                "job %s: could not remove job directory %s: %s", self.job_id, self.path, exc
            )
            return False
        return True
