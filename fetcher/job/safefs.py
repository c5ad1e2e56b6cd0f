"""File operations inside a directory a stranger could write to: no link is followed, nothing but
regular files and directories is opened, and no walk or delete recurses on the stack.

Everything works on directory file descriptors (`dir_fd`), one path component at a time, opened
with O_NOFOLLOW: a symlink anywhere is refused (ELOOP) instead of followed. Files are opened with
O_NONBLOCK (a FIFO cannot block the open) after an `lstat` says they are regular files (a device
node is never opened), and `fstat` checks that the file opened is the one looked at. Deep trees
are walked and removed with an explicit stack and a single open directory at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path component is a link, or not the kind of file expected."""


class TooManyEntries(Exception):
    """A walk met more directory entries than it was allowed to look at."""


class EntryBudget:
    """How many directory entries walks may still list, shared by several walks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooManyEntries(f"more than {self.limit} files and directories")


def open_dir(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a directory without following a link at its last component. Raises OSError."""
    return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


def open_subdir(dir_fd: int, parts: list[str]) -> int:
    """Open `parts` below `dir_fd`, one component at a time, never following a link."""
    fd = os.dup(dir_fd)
    try:
        for name in parts:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise
    return fd


def make_dirs(dir_fd: int, parts: list[str], mode: int = 0o777) -> int:
    """Create `parts` below `dir_fd` as real directories (existing ones are kept if they are real
    directories) with exactly `mode`, and return the last one opened. Raises OSError/UnsafePath."""
    fd = os.dup(dir_fd)
    try:
        for name in parts:
            try:
                os.mkdir(name, mode, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(exc.errno, f"{name!r} is not a directory") from None
                raise
            os.close(fd)
            fd = child
            if created:
                os.fchmod(fd, mode)  # the umask must not take the job's write permission away
    except OSError:
        os.close(fd)
        raise
    return fd


def create_file(dir_fd: int, name: str, mode: int = 0o644) -> int:
    """Create a new file `name` in `dir_fd` (fails if anything of that name exists). Raises OSError."""
    fd = os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)
    os.fchmod(fd, mode)
    return fd


def open_regular(dir_fd: int, parts: list[str]) -> int | None:
    """Open the regular file at `parts` below `dir_fd` for reading; None if it is anything else (a
    link, FIFO, device, socket, directory) or a directory on the way is. Raises OSError otherwise."""
    try:
        parent = open_subdir(dir_fd, parts[:-1])
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None
        raise
    try:
        try:
            before = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(before.st_mode):
            return None
        try:
            fd = os.open(parts[-1], READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                return None
            raise
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            os.close(fd)
            return None
        return fd
    finally:
        os.close(parent)


@dataclass(frozen=True)
class Found:
    """A regular file found by `walk_files`: its path below the root, as components, and its size."""

    parts: tuple[str, ...]
    size: int


Skipped = Callable[[tuple[str, ...], str], None]


def walk_files(
    root_fd: int,
    *,
    max_depth: int,
    skipped: Skipped | None = None,
    budget: EntryBudget | None = None,
) -> Iterator[Found]:
    """Every regular file below `root_fd`, sorted per directory, directories at most `max_depth`
    deep. Links, FIFOs, devices and sockets are reported to `skipped` and never opened; so are
    directories deeper than `max_depth` (not descended). Iterative: the stack holds at most
    `max_depth` open directories. Each entry listed is taken from `budget`: TooManyEntries as soon
    as it is spent (so a directory of millions of files costs neither memory nor hours)."""
    # open directories, each with its entries still to look at; every fd in it is closed at the end
    stack: list[tuple[int, tuple[str, ...], list[os.DirEntry[str]]]] = [(os.dup(root_fd), (), [])]
    try:
        stack[-1][2].extend(_listed(stack[-1][0], budget))
        while stack:
            fd, prefix, entries = stack[-1]
            if not entries:
                os.close(fd)
                stack.pop()
                continue
            entry = entries.pop()
            parts = (*prefix, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                child = _descend(fd, entry.name, parts, max_depth, skipped)
                if child is not None:
                    stack.append((child, parts, []))
                    stack[-1][2].extend(_listed(child, budget))
            elif stat.S_ISREG(st.st_mode):
                yield Found(parts, st.st_size)
            elif skipped:
                skipped(parts, _kind(st.st_mode))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _listed(fd: int, budget: EntryBudget | None) -> list[os.DirEntry[str]]:
    """The entries of the directory open in `fd`, in reverse name order (popped from the end),
    each taken from `budget`."""
    entries: list[os.DirEntry[str]] = []
    with os.scandir(fd) as it:
        for entry in it:
            if budget is not None:
                budget.take()
            entries.append(entry)
    entries.sort(key=lambda e: e.name, reverse=True)
    return entries


def _descend(
    fd: int, name: str, parts: tuple[str, ...], max_depth: int, skipped: Skipped | None
) -> int | None:
    """The subdirectory `name` of `fd` opened (no link followed), or None when it is too deep or
    cannot be opened (told to `skipped`)."""
    if len(parts) > max_depth:
        if skipped:
            skipped(parts, f"more than {max_depth} directories deep")
        return None
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if skipped:
            skipped(parts, f"cannot be opened ({exc.strerror})")
        return None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove `name` in `dir_fd`, whatever it is: a file, link or node is unlinked (never followed),
    a directory is removed with everything below it, however deep. Raises OSError (e.g. a
    permission error on files a job wrote as another user); a missing entry is no error."""
    try:
        top = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    # (name, identity) of each directory from `name` down to the one open in `fd`
    path: list[tuple[str, tuple[int, int]]] = []
    fd = _open_checked(dir_fd, name, (top.st_dev, top.st_ino))
    path.append((name, (top.st_dev, top.st_ino)))
    try:
        while path:
            child = _first_subdir_after_unlinking_the_rest(fd)
            if child is not None:
                sub_name, ident = child
                sub = _open_checked(fd, sub_name, ident)
                os.close(fd)
                fd = sub
                path.append((sub_name, ident))
                continue
            # `fd` is empty now: step up and remove it
            done_name, _ = path.pop()
            if path:
                parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                st = os.fstat(parent)
                if (st.st_dev, st.st_ino) != path[-1][1]:
                    os.close(parent)
                    raise UnsafePath(errno.EXDEV, "a directory moved while it was being removed")
                os.close(fd)
                fd = parent
                os.rmdir(done_name, dir_fd=fd)
            else:
                os.close(fd)
                fd = -1
                os.rmdir(done_name, dir_fd=dir_fd)
    finally:
        if fd >= 0:
            os.close(fd)


def _open_checked(dir_fd: int, name: str, ident: tuple[int, int]) -> int:
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        raise UnsafePath(errno.EXDEV, f"{name!r} changed while it was being removed")
    return fd


def _first_subdir_after_unlinking_the_rest(fd: int) -> tuple[str, tuple[int, int]] | None:
    """Unlink every non-directory in `fd` up to the first subdirectory, and return that one."""
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                return entry.name, (st.st_dev, st.st_ino)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=fd)
    return None
