"""The job directory: the spec's paths checked once (`plan_layout`), the directory created with the
job's directories in it, inputs written, outputs listed and read, and the directory removed.

The job directory is written by a stranger's code: after the job ran, every entry in it is
hostile. All I/O here goes through `safefs` (no link followed, only regular files opened, no
recursion), starting from PATH_BASE, which the operator chose and is trusted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fetcher.api.files import check_relative_path
from fetcher.errors import InvalidJobSpec, TransferError
from fetcher.job import safefs
from fetcher.logs import shown
from fetcher.models import JobSpecs, UploadType, has_control_char

log = logging.getLogger(__name__)

CONTAINER_MOUNT = "/files"
MAX_PATH_BYTES = 1024  # a spec path, and an upload's base_path (it travels in a query string)
MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_PARTS = 32  # components of a spec path
UPLOAD_MAX_DEPTH = 32  # directories below the job directory that are looked into for uploads
SKIPPED_LOGGED = 20  # entries not uploaded (links, FIFOs, ...) logged one by one, per job
DIR_MODE = 0o777  # the job's directories: writable by whatever user the image runs as
FILE_MODE = 0o644


class OutputLimit(TransferError):
    """The job left more output than the settings allow (JOB_OUTPUT_MAX_FILES, JOB_OUTPUT_MAX_MB)."""


@dataclass(frozen=True)
class Input:
    parts: tuple[str, ...]
    file_id: str

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class OutputDir:
    kind: UploadType
    parts: tuple[str, ...]

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Layout:
    """The spec's paths, checked: what is downloaded where, and which directories are uploaded."""

    inputs: tuple[Input, ...]
    outputs: tuple[OutputDir, ...]

    def output_dir(self, kind: UploadType) -> OutputDir | None:
        return next((o for o in self.outputs if o.kind == kind), None)


def _bad(job_id: str, field: str, why: str) -> InvalidJobSpec:
    return InvalidJobSpec(job_id, field, why)


def split_relative(job_id: str, field: str, value: object) -> tuple[str, ...]:
    """A path relative to the job directory, as components. Raises InvalidJobSpec naming `field`."""
    if not isinstance(value, str):
        raise _bad(job_id, field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise _bad(job_id, field, "is empty")
    if has_control_char(value):
        raise _bad(job_id, field, "contains a control character (NUL, newline, ...)")
    if value.startswith("/"):
        raise _bad(job_id, field, "must be relative to the job directory, not absolute")
    raw = value.split("/")
    if ".." in raw:
        raise _bad(job_id, field, "must not contain '..'")
    parts = tuple(p for p in raw if p not in ("", "."))
    if not parts:
        raise _bad(job_id, field, "names the job directory itself, not a path inside it")
    if len(value.encode()) > MAX_PATH_BYTES:
        raise _bad(job_id, field, f"is longer than {MAX_PATH_BYTES} bytes")
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        raise _bad(job_id, field, f"has a name longer than {MAX_NAME_BYTES} bytes")
    if len(parts) > MAX_PARTS:
        raise _bad(job_id, field, f"is more than {MAX_PARTS} directories deep")
    return parts


def sendable(base_path: str) -> bool:
    """Whether the upload sends `base_path` (`check_relative_path`), so that a path the fetcher
    accepts is never one that its upload refuses."""
    try:
        check_relative_path(base_path, "base_path")
    except ValueError:
        return False
    return True


def check_sendable(job_id: str, field: str, parts: tuple[str, ...]) -> None:
    """A `files_up` directory starts the `base_path` of every upload of its files, so it must
    pass the check the upload itself applies (`check_relative_path`: besides `..` and a leading
    `/`, a leading `\\`, an `X:` drive prefix, a `..` between backslashes). Refused here, before
    the job runs, it is the job's own `invalid job spec`; found only at the upload, it was a
    fetcher error that handed the job back, to waste a run on every worker. Raises InvalidJobSpec
    naming `field` and the path."""
    rel = "/".join(parts)
    if not sendable(rel):
        raise _bad(
            job_id,
            field,
            f"{shown(rel)} cannot be sent as an upload's base_path (a drive prefix such as 'a:',"
            " a leading '\\' or a '..' between backslashes)",
        )


def check_file_id(job_id: str, field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(job_id, field, "the file id must be a non-empty string")
    if has_control_char(value):
        raise _bad(job_id, field, "the file id contains a control character")
    if ".." in value.split("/"):
        raise _bad(job_id, field, "the file id must not contain '..'")
    if len(value) > 4096:
        raise _bad(job_id, field, "the file id is longer than 4096 characters")
    return value


def _is_under(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    return len(inner) >= len(outer) and inner[: len(outer)] == outer


def plan_layout(job_id: str, spec: JobSpecs) -> Layout:
    """Check every path of the spec before anything is written. Raises InvalidJobSpec."""
    inputs: list[Input] = []
    for key, file_id in (spec.handler.files_down or {}).items():
        field = f"handler.files_down[{shown(key)}]"
        parts = split_relative(job_id, field, key)
        check_file_id(job_id, field, file_id)
        for other in inputs:
            if other.parts == parts:
                raise _bad(job_id, field, f"is the same file as {shown(other.rel)}")
            if _is_under(other.parts, parts) or _is_under(parts, other.parts):
                raise _bad(
                    job_id, field, f"conflicts with {shown(other.rel)}: a file cannot hold another"
                )
        inputs.append(Input(parts, file_id))
    outputs: list[OutputDir] = []
    for kind, rel in (spec.handler.files_up or {}).items():
        field = f"handler.files_up[{shown(kind.value)}]"
        parts = split_relative(job_id, field, rel)
        check_sendable(job_id, field, parts)
        for inp in inputs:
            if _is_under(parts, inp.parts):
                raise _bad(job_id, field, f"{shown(rel)} is also an input file ({shown(inp.rel)})")
        outputs.append(OutputDir(kind, parts))
    return Layout(tuple(inputs), tuple(outputs))


@dataclass(frozen=True)
class OutputFile:
    """A file to upload: its type, its directory relative to the job directory (`base_path`, which
    starts with the `files_up` directory itself), its name, and where it is."""

    kind: UploadType
    base_path: str
    name: str
    parts: tuple[str, ...]
    size: int


Opened = Callable[[], BinaryIO]


class Workspace:
    """PATH_BASE/<queue id>: where it is for the fetcher and for the engine's host, and its I/O."""

    def __init__(self, job_id: str, base: Path, host_base: Path) -> None:
        self.job_id = job_id
        self.base = base
        self.path = base / job_id
        self.host_path = host_base / job_id
        self._skips = 0

    # --- file descriptors ----------------------------------------------------------------------
    def _base_fd(self) -> int:
        # PATH_BASE is the operator's choice (it may be a link they made): opened as configured
        return os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _root_fd(self) -> int:
        """The job directory, refusing a link in its place. Raises OSError/UnsafePath."""
        base = self._base_fd()
        try:
            return safefs.open_dir(self.job_id, dir_fd=base)
        finally:
            os.close(base)

    # --- lifecycle -----------------------------------------------------------------------------
    def create(self, layout: Layout) -> None:
        """A fresh, empty job directory (whatever was at its place is removed, links unfollowed),
        with every `files_up` directory and every input's parents in it, writable by the job.
        Raises OSError (disk full, permissions: the worker's trouble)."""
        base = self._base_fd()
        try:
            safefs.remove_entry(base, self.job_id)
            os.close(safefs.make_dirs(base, [self.job_id], DIR_MODE))
        finally:
            os.close(base)
        root = self._root_fd()
        try:
            for out in layout.outputs:
                os.close(safefs.make_dirs(root, list(out.parts), DIR_MODE))
            for inp in layout.inputs:
                os.close(safefs.make_dirs(root, list(inp.parts[:-1]), DIR_MODE))
        finally:
            os.close(root)

    def check_mountable(self) -> None:
        """The bind-mount source must be the real job directory: the engine follows links."""
        st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise safefs.UnsafePath(errno.ELOOP, f"{self.path} is not a real directory")

    def remove(self) -> bool:
        """Remove the job directory (never following a link out of it); False if some of it could
        not be removed (files a job wrote as another user). Never raises."""
        try:
            base = self._base_fd()
        except OSError as exc:
            log.warning("job %s: cannot open PATH_BASE %s: %s", self.job_id, self.base, exc)
            return False
        try:
            safefs.remove_entry(base, self.job_id)
        except OSError as exc:
            log.warning(
                "job %s: could not remove job directory %s: %s", self.job_id, self.path, exc
            )
            return False
        finally:
            os.close(base)
        return True

    # --- inputs --------------------------------------------------------------------------------
    def write_input(self, inp: Input, fill: Callable[[BinaryIO], int]) -> int:
        """Write an input through `fill` (which may rewind and start again) into a new temporary
        file beside its place, then rename it into place. Returns what `fill` returns."""
        root = self._root_fd()
        try:
            parent = safefs.open_subdir(root, list(inp.parts[:-1]))
        finally:
            os.close(root)
        name = inp.parts[-1]
        tmp = f".{secrets.token_hex(6)}.part"
        try:
            fd = safefs.create_file(parent, tmp, FILE_MODE)
            with os.fdopen(fd, "w+b") as fh:
                size = fill(fh)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            os.close(parent)

    # --- outputs -------------------------------------------------------------------------------
    def output_files(
        self, layout: Layout, *, max_files: int | None = None, max_bytes: int | None = None
    ) -> list[OutputFile]:
        """Every regular file under each `files_up` directory. Links, FIFOs, devices, sockets and
        trees deeper than UPLOAD_MAX_DEPTH are skipped, with a log line each. More than `max_files`
        entries (files, directories, anything) or more than `max_bytes` in files is the job's
        fault: OutputLimit, found without listing more than the limit."""
        found: list[OutputFile] = []
        total = 0
        budget = None if max_files is None else safefs.EntryBudget(max_files)
        self._skips = 0  # entries skipped so far: the first SKIPPED_LOGGED are logged one by one
        root = self._root_fd()
        try:
            for out in layout.outputs:
                for item in self._outputs_of(root, out, budget):
                    found.append(item)
                    total += item.size
                    if max_bytes is not None and total > max_bytes:
                        raise OutputLimit(
                            f"outputs: more than {max_bytes // 2**20} MiB in the files_up"
                            " directories (JOB_OUTPUT_MAX_MB); nothing uploaded but the"
                            " container's log"
                        )
        except safefs.TooManyEntries:
            raise OutputLimit(
                f"outputs: more than {max_files} files and directories in the files_up"
                " directories (JOB_OUTPUT_MAX_FILES); nothing uploaded but the container's log"
            ) from None
        finally:
            os.close(root)
            if self._skips > SKIPPED_LOGGED:
                log.warning(
                    "job %s: not uploading %d more entries (links, FIFOs, ...)",
                    self.job_id,
                    self._skips - SKIPPED_LOGGED,
                )
        return found

    def _outputs_of(
        self, root: int, out: OutputDir, budget: safefs.EntryBudget | None
    ) -> Iterator[OutputFile]:
        """The files to upload under one `files_up` directory (none when it is missing)."""
        try:
            top = safefs.open_subdir(root, list(out.parts))
        except OSError:
            log.info("job %s: no %s directory %s to upload", self.job_id, out.kind.value, out.rel)
            return
        try:
            files = safefs.walk_files(
                top,
                max_depth=max(UPLOAD_MAX_DEPTH - len(out.parts), 0),
                skipped=functools.partial(self._skipped, out),
                budget=budget,
            )
            for f in files:
                item = self._output(out, f)
                if item is not None:
                    yield item
        finally:
            os.close(top)

    def _skipped(self, out: OutputDir, parts: tuple[str, ...], why: str) -> None:
        self._skips += 1
        if self._skips > SKIPPED_LOGGED:
            return
        log.warning(
            "job %s: not uploading %s: %s", self.job_id, shown("/".join((*out.parts, *parts))), why
        )

    def _output(self, out: OutputDir, f: safefs.Found) -> OutputFile | None:
        parts = (*out.parts, *f.parts)
        name = f.parts[-1]
        base_path = "/".join(parts[:-1])
        if has_control_char("/".join(parts)):
            self._skipped(out, f.parts, "its name contains a control character")
            return None
        try:
            "/".join(parts).encode("utf-8")  # bytes that are no UTF-8 come as lone surrogates
        except UnicodeEncodeError:
            self._skipped(out, f.parts, "its name is not valid UTF-8")
            return None
        if len(base_path.encode()) > MAX_PATH_BYTES:
            self._skipped(out, f.parts, f"its directory is longer than {MAX_PATH_BYTES} bytes")
            return None
        if not sendable(base_path):
            # a directory the job named `a\..\b`: the upload would refuse it (see check_sendable)
            self._skipped(out, f.parts, "its directory cannot be sent as an upload's base_path")
            return None
        return OutputFile(out.kind, base_path, name, parts, f.size)

    def open_output(self, item: OutputFile) -> BinaryIO | None:
        """The output file opened for reading, or None if it is no longer a regular file."""
        root = self._root_fd()
        try:
            fd = safefs.open_regular(root, list(item.parts))
        finally:
            os.close(root)
        return None if fd is None else os.fdopen(fd, "rb")
