"""The follower of a job's output: it reads the attach stream to its end whatever happens to the
file (a stream nobody reads holds the job's writes), hangs the stream up when it stops, and keeps
the start of the output in the file and its end as the tail."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.engine.output import LogFollower


def test_the_whole_stream_is_kept_up_to_the_cap_and_then_hung_up(tmp_path: Path) -> None:
    hung_up = threading.Event()
    chunks = [b"line %d\n" % i for i in range(1000)]
    f = LogFollower("7", iter(chunks), tmp_path / "log", 100_000, 50, hang_up=hung_up.set)
    f.start().join(10)
    assert (tmp_path / "log").read_bytes() == b"".join(chunks)
    assert hung_up.is_set()
    assert f.tail().endswith("line 999")


def test_a_broken_stream_is_hung_up_and_what_came_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Iterator[bytes]:
        yield b"before\n"
        raise ConnectionResetError(104, "Connection reset by peer")

    hung_up = threading.Event()
    f = LogFollower("7", broken(), tmp_path / "log", 1000, 50, hang_up=hung_up.set)
    f.start().join(10)
    assert hung_up.is_set()
    assert (tmp_path / "log").read_bytes() == b"before\n"
    assert "job 7: could not read the container's output" in caplog.text


class StuckDisk(io.RawIOBase):
    """A file whose writes hang until released (a hung network file system)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.got = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        self.release.wait()
        self.got += len(b)  # type: ignore[arg-type]
        return len(b)  # type: ignore[arg-type]


def test_a_hung_disk_never_holds_the_stream(tmp_path: Path) -> None:
    # the reader goes on to the end of the stream (so the job is never held) while the writer
    # hangs; what does not fit in the buffer is counted as lost
    disk = StuckDisk()
    chunks = [b"x" * 1000] * 5000  # 5 MB
    done = threading.Event()

    def stream() -> Iterator[bytes]:
        yield from chunks
        done.set()

    f = LogFollower("7", stream(), tmp_path / "log", 10**9, 50)
    f.BUFFER_BYTES = 100_000
    f._open = lambda: disk  # type: ignore[method-assign, assignment, return-value]
    f.start()
    assert done.wait(10), "the stream was not read to its end while the disk hung"
    assert f.lost >= 5_000_000 - 100_000 - 1000
    disk.release.set()
    f.join(10)
    assert not f._writer.is_alive()


def test_a_failing_disk_stops_the_file_not_the_stream(tmp_path: Path) -> None:
    class FullDisk(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            raise OSError(28, "No space left on device")

    hung_up = threading.Event()
    f = LogFollower("7", iter([b"a" * 10] * 100), tmp_path / "log", 10**6, 50, hang_up=hung_up.set)
    f._open = lambda: FullDisk()  # type: ignore[method-assign, assignment, return-value]
    started = time.monotonic()
    f.start().join(10)
    assert time.monotonic() - started < 5 and hung_up.is_set()
    assert f.lost == 10 and f.tail().endswith("a" * 10)
