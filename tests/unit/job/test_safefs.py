"""Safe file operations in a directory a stranger wrote: links, FIFOs, devices, 3000-deep trees."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fetcher.job import safefs


def deep(root: Path, depth: int) -> None:
    """`depth` nested directories `d` below root, with a file at the bottom (built without
    ever using a long path)."""
    fd = safefs.open_dir(root)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = safefs.open_dir("d", dir_fd=fd)
            os.close(fd)
            fd = child
        out = safefs.create_file(fd, "bottom.txt")
        os.close(out)
    finally:
        os.close(fd)


def fd_of(path: Path) -> int:
    return safefs.open_dir(path)


def test_remove_entry_removes_a_3000_deep_tree(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    deep(tmp_path / "job", 3000)
    fd = fd_of(tmp_path)
    try:
        safefs.remove_entry(fd, "job")
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


def test_remove_entry_never_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    job = tmp_path / "job"
    job.mkdir()
    (job / "to-victim").symlink_to(victim)
    (job / "sub").mkdir()
    (job / "sub" / "file-link").symlink_to(victim / "keep.txt")
    (tmp_path / "job-link").symlink_to(victim)
    fd = fd_of(tmp_path)
    try:
        safefs.remove_entry(fd, "job")
        safefs.remove_entry(fd, "job-link")  # a link at the top is unlinked, not followed
        safefs.remove_entry(fd, "missing")  # nothing there: no error
    finally:
        os.close(fd)
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_remove_entry_removes_fifos_sockets_and_read_only_dirs(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "ro").mkdir(parents=True)
    os.mkfifo(job / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(job / "sock"))
    (job / "ro" / "f").write_text("x")
    (job / "ro").chmod(0o500)
    fd = fd_of(tmp_path)
    try:
        safefs.remove_entry(fd, "job")
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


def test_walk_files_yields_regular_files_only_and_stops_at_max_depth(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_text("12345")
    (tmp_path / "top.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to("/etc/passwd")
    (tmp_path / "dirlink").symlink_to("/etc")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "z").mkdir()
    deep(tmp_path / "z", 50)
    skipped: list[tuple[tuple[str, ...], str]] = []
    fd = fd_of(tmp_path)
    try:
        found = list(
            safefs.walk_files(fd, max_depth=10, skipped=lambda p, why: skipped.append((p, why)))
        )
    finally:
        os.close(fd)
    assert [(f.parts, f.size) for f in found] == [(("a", "b", "f.txt"), 5), (("top.txt",), 1)]
    reasons = {p[-1] if len(p) < 5 else "deep": why for p, why in skipped}
    assert reasons["link.txt"] == "a symbolic link" and reasons["dirlink"] == "a symbolic link"
    assert reasons["fifo"] == "a FIFO"
    assert "deep" in reasons["deep"]


def test_open_regular_refuses_links_fifos_and_links_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("data")
    (tmp_path / "via").symlink_to(tmp_path / "real")
    (tmp_path / "l.txt").symlink_to(tmp_path / "real" / "f.txt")
    os.mkfifo(tmp_path / "fifo")
    fd = fd_of(tmp_path)
    try:
        good = safefs.open_regular(fd, ["real", "f.txt"])
        assert good is not None
        assert os.read(good, 10) == b"data"
        os.close(good)
        assert safefs.open_regular(fd, ["via", "f.txt"]) is None
        assert safefs.open_regular(fd, ["l.txt"]) is None
        assert safefs.open_regular(fd, ["fifo"]) is None  # and it did not block
        assert safefs.open_regular(fd, ["real"]) is None
        assert safefs.open_regular(fd, ["nothing"]) is None
    finally:
        os.close(fd)


def test_make_dirs_creates_writable_dirs_and_refuses_a_link(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fd = fd_of(tmp_path)
        try:
            os.close(safefs.make_dirs(fd, ["model", "ckpt"]))
            (tmp_path / "evil").symlink_to("/tmp")
            with pytest.raises(safefs.UnsafePath):
                safefs.make_dirs(fd, ["evil", "x"])
        finally:
            os.close(fd)
    finally:
        os.umask(old)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777
    assert (tmp_path / "model" / "ckpt").stat().st_mode & 0o777 == 0o777


def test_create_file_refuses_to_write_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("precious")
    (tmp_path / "out.part").symlink_to(target)
    fd = fd_of(tmp_path)
    try:
        with pytest.raises(FileExistsError):
            safefs.create_file(fd, "out.part")
    finally:
        os.close(fd)
    assert target.read_text() == "precious"


def test_walk_files_stops_listing_when_its_budget_of_entries_is_spent(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(30):
        (tmp_path / "a" / f"f{i}").write_bytes(b"")
    open_before = len(os.listdir("/proc/self/fd"))
    fd = fd_of(tmp_path)
    try:
        budget = safefs.EntryBudget(10)
        with pytest.raises(safefs.TooManyEntries, match="more than 10 files and directories"):
            list(safefs.walk_files(fd, max_depth=5, budget=budget))
        # the walk gave up at the 11th entry instead of listing the 31
        assert budget.left == -1
        whole = safefs.EntryBudget(31)
        assert len(list(safefs.walk_files(fd, max_depth=5, budget=whole))) == 30
        assert whole.left == 0
    finally:
        os.close(fd)
    # no directory descriptor leaked by the walk that gave up
    assert len(os.listdir("/proc/self/fd")) == open_before
