"""A streamed multipart/form-data body for uploads: the fields first, then one file, read from disk
in 64 KiB blocks into one reused buffer (never the whole file in memory), with a length known up
front so that requests sends `Content-Length` rather than a chunked body.

Pass a `MultipartBody` as `data=` to requests: it has `__len__` (requests sets Content-Length from
it) and `__iter__` (urllib3 sends each block as it comes, with one `sendall`); it has no `read`,
on purpose, or urllib3 would read it in its own 16 KiB pieces.

What the receiving server pays for, measured against the DECODE WorkerAPI (FastAPI, Starlette and
python-multipart on uvicorn): its CPU goes per chunk it is handed (one socket read of at most 256
KiB, then uvicorn, Starlette, python-multipart and a thread-pool hop to write the chunk), so what
the client does to the server is chiefly how full those reads are. A client that writes in large
blocks and keeps ahead of the server keeps the socket full, and every read is a whole 256 KiB; a
slow client that writes 16 KiB pieces (requests_toolbelt's MultipartEncoder through urllib3) has
the server read less at a time, up to twice as many chunks per GiB. Inside python-multipart, each
chunk costs a `bytes.find` of `b"\\r\\n--" + boundary` over the chunk, plus a Python loop over the
chunk's last `len(boundary) + 4` bytes (a boundary cut by the chunk's end); CPython's `find` skips
ahead by up to the needle's length on each byte that is not among the needle's last characters
(compared on their low 6 bits: a two-way search with a 64-entry table for chunks of 30000 bytes
and more, a 64-bit bloom filter of the needle's characters below that). So the boundary is as long
as curl's (40 characters, so the per-chunk Python loop costs what it costs for curl) and made of
few distinct characters (the 16 hex digits and the dash: a uuid4 hex boundary of 32 is a shorter
needle, hence shorter skips; 62 alphanumerics fill most of the 64 bloom slots) with a run of
dashes at its end, so that the skips on random data are at least as long as for curl's. Measured
on python-multipart 0.0.20 alone (the WorkerAPI's), random data fed in 256 KiB chunks: 0.15 s/GiB
with a uuid4 hex boundary, 0.13 with curl's, 0.10 with this one; in 16 KiB chunks 0.5-0.9 s/GiB
whatever the boundary. The chunks matter more than the boundary; newer python-multipart (0.0.34,
the mock's) looks for a cut boundary with `rfind` and no Python loop.

The boundary is 32 random hex digits (128 bits from `secrets`, drawn anew for each body) and 8
dashes. That it never appears in the file cannot be proven without reading the file twice; for a
file that was written before the boundary was drawn, the chance that it holds `--<boundary>` at
any of its n positions is at most n / 2**128.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from typing import BinaryIO

from urllib3.fields import format_multipart_header_param

from fetcher.errors import Interrupted, TransferError

# One read and one sendall per block, of curl's upload buffer size. The block is the client's
# whole working set, and where the client shares the box's caches with the server (the real
# WorkerAPI on loopback, 2 cores, interleaved rounds against curl) 64 KiB blocks cost the server
# 3-9 % less CPU per GiB than 1 MiB ones, for the same bytes in the same system calls, and were
# 6-13 % faster, level with curl, in three runs of 16 to 30 rounds (docs/development.md), most
# likely because a 1 MiB buffer fills a whole L2 cache on every block. Our CPU goes from 0.4 to
# about 0.6 s/GiB, curl's; the sockets stay full, and an interrupt is seen sooner.
BLOCK_SIZE = 64 * 1024
MAX_BOUNDARY = 70  # RFC 2046


def new_boundary() -> str:
    """32 random hex digits (128 bits) then 8 dashes: 40 characters, like curl's."""
    return secrets.token_hex(16) + "-" * 8


def _check_boundary(boundary: str) -> None:
    allowed = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
    if not 1 <= len(boundary) <= MAX_BOUNDARY or not set(boundary) <= allowed:
        raise ValueError("a multipart boundary is 1 to 70 characters of RFC 2046's set")
    if boundary.endswith(" "):
        raise ValueError("a multipart boundary cannot end with a space")


class MultipartBody:
    """The body `--B fields... --B file-part <file> --B--` of one file upload, streamed.

    `fields` are sent first, in order, as plain form fields; then the file in field `file` under
    `filename` (application/octet-stream), from the current position of `fh` to its end as it is
    now (`len` counts on that size: a file that shrinks while it is sent raises TransferError;
    bytes that a growing file gains are not sent). Each iteration sends the whole body from the
    start (`rewind` also starts the next one there); every block is a memoryview of one buffer,
    valid until the next block is asked for. Raises Interrupted before the next block once
    `interrupt` is set.
    """

    def __init__(
        self,
        fields: list[tuple[str, str]],
        fh: BinaryIO,
        filename: str,
        *,
        interrupt: threading.Event | None = None,
        boundary: str | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.boundary = new_boundary() if boundary is None else boundary
        _check_boundary(self.boundary)
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._fd = fh.fileno()
        self._start = fh.tell()
        self.file_size = max(0, os.fstat(self._fd).st_size - self._start)
        self._interrupt = interrupt
        self._block_size = block_size
        dash = b"--" + self.boundary.encode("ascii")
        head = bytearray()
        for name, value in fields:
            head += dash + b"\r\n"
            head += _disposition(name).encode() + b"\r\n\r\n"
            head += value.encode("utf-8") + b"\r\n"
        head += dash + b"\r\n"
        head += (
            _disposition("file") + "; " + format_multipart_header_param("filename", filename)
        ).encode()
        head += b"\r\nContent-Type: application/octet-stream\r\n\r\n"
        self._head = bytes(head)
        self._tail = b"\r\n" + dash + b"--\r\n"
        self._buffer: bytearray | None = None
        self.sent = 0  # bytes of the body handed out by the current iteration

    def __len__(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def rewind(self) -> None:
        """Start again from the first byte (a retry); the next iteration does so in any case."""
        self.sent = 0

    def _check(self) -> None:
        if self._interrupt is not None and self._interrupt.is_set():
            raise Interrupted("upload interrupted")

    def __iter__(self) -> Iterator[memoryview]:
        self.rewind()
        self._check()
        if self._buffer is None:
            self._buffer = bytearray(max(self._block_size, len(self._head), len(self._tail)))
        buf = memoryview(self._buffer)
        size = len(buf)
        # the first block starts with the head, the last one ends with the tail (when it fits)
        buf[: len(self._head)] = self._head
        filled = len(self._head)
        offset, left = self._start, self.file_size
        while True:
            while left and filled < size:
                try:
                    n = os.preadv(
                        self._fd, [buf[filled : filled + min(size - filled, left)]], offset
                    )
                except OSError as exc:
                    raise TransferError(f"cannot read the file to upload: {exc.strerror}") from None
                if n == 0:
                    raise TransferError(
                        f"the file to upload shrank while it was sent (to {offset - self._start}"
                        f" of {self.file_size} bytes)"
                    )
                filled += n
                offset += n
                left -= n
            if not left and size - filled >= len(self._tail):
                buf[filled : filled + len(self._tail)] = self._tail
                filled += len(self._tail)
                self.sent += filled
                yield buf[:filled]
                return
            self.sent += filled
            yield buf[:filled]
            self._check()
            if not left:
                self.sent += len(self._tail)
                yield memoryview(self._tail)
                return
            filled = 0


def _disposition(name: str) -> str:
    return "Content-Disposition: form-data; " + format_multipart_header_param("name", name)
