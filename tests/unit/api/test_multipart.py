"""The streamed multipart body: byte for byte what urllib3 (and requests_toolbelt before it) would
build, parsed back by python-multipart (the server's parser), its length, rewinding, interrupts."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
import requests
from urllib3.filepost import encode_multipart_formdata

from fetcher.api.multipart import BLOCK_SIZE, MultipartBody, new_boundary
from fetcher.errors import Interrupted, TransferError

FIELDS = [("key", "user1/out/${filename}"), ("policy", "p0l1cy"), ("x-amz-signature", "ab=cd")]


def joined(body: MultipartBody) -> bytes:
    return b"".join(bytes(block) for block in body)


def reference(fields: list[tuple[str, str]], name: str, data: bytes, boundary: str) -> bytes:
    """What urllib3's encoder makes of the same fields and file (requests_toolbelt builds the same)."""
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = list(fields)
    parts.append(("file", (name, data, "application/octet-stream")))
    body, content_type = encode_multipart_formdata(parts, boundary=boundary)
    assert content_type == f"multipart/form-data; boundary={boundary}"
    return body


def parsed(raw: bytes, boundary: str, chunk: int) -> list[tuple[dict[bytes, bytes], bytes]]:
    """(headers, data) of each part, as python-multipart reads them when fed `chunk` bytes at a time."""
    multipart = pytest.importorskip("python_multipart.multipart")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field, value = bytearray(), bytearray()

    def begin() -> None:
        parts.append(({}, bytearray()))

    def header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def header_end() -> None:
        parts[-1][0][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = multipart.MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_part_data": part_data,
        },
    )
    for i in range(0, len(raw), chunk):
        parser.write(raw[i : i + chunk])
    parser.finalize()
    return [(h, bytes(d)) for h, d in parts]


def open_with(tmp_path: Path, data: bytes, name: str = "result.h5") -> BinaryIO:
    path = tmp_path / name
    path.write_bytes(data)
    return path.open("rb")


@pytest.mark.parametrize("size", [0, 1, 99, 4096, 3 * 4096, 3 * 4096 + 17])
@pytest.mark.parametrize("block", [1, 97, 4096])
def test_the_body_is_byte_for_byte_the_reference_encoding(
    tmp_path: Path, size: int, block: int
) -> None:
    data = os.urandom(size)
    with open_with(tmp_path, data) as fh:
        body = MultipartBody(FIELDS, fh, "result.h5", block_size=block)
        raw = joined(body)
    assert raw == reference(FIELDS, "result.h5", data, body.boundary)
    assert len(raw) == len(body)


def test_names_are_escaped_as_urllib3_does(tmp_path: Path) -> None:
    name = 'ré"sult\r\n.h5'
    fields = [('na"me', "välue"), ("empty", "")]
    with open_with(tmp_path, b"x", "plain") as fh:
        body = MultipartBody(fields, fh, name)
        raw = joined(body)
    assert raw == reference(fields, name, b"x", body.boundary)
    assert b'filename="r\xc3\xa9%22sult%0D%0A.h5"' in raw


@pytest.mark.parametrize("chunk", [7, 4096, 256 * 1024])
def test_the_servers_parser_reads_the_fields_first_then_the_file(
    tmp_path: Path, chunk: int
) -> None:
    data = os.urandom(300_000) + b"\r\n--" + b"-" * 50 + b"\r\n"  # near-misses of a delimiter
    with open_with(tmp_path, data) as fh:
        body = MultipartBody(FIELDS, fh, "result.h5", block_size=65536)
        parts = parsed(joined(body), body.boundary, chunk)
    assert [d for _, d in parts[:-1]] == [v.encode() for _, v in FIELDS]
    assert [h[b"content-disposition"] for h, _ in parts] == [
        b'form-data; name="key"',
        b'form-data; name="policy"',
        b'form-data; name="x-amz-signature"',
        b'form-data; name="file"; filename="result.h5"',
    ]
    headers, content = parts[-1]
    assert headers[b"content-type"] == b"application/octet-stream"
    assert content == data


def test_the_file_is_sent_from_where_the_handle_stands(tmp_path: Path) -> None:
    with open_with(tmp_path, b"skipped|sent") as fh:
        fh.seek(8)
        body = MultipartBody([], fh, "f")
        assert body.file_size == 4
        assert joined(body) == reference([], "f", b"sent", body.boundary)


def test_requests_sends_content_length_not_chunks(tmp_path: Path) -> None:
    with open_with(tmp_path, os.urandom(5000)) as fh:
        body = MultipartBody(FIELDS, fh, "f", block_size=1000)
        prepared = requests.Request("POST", "http://h.test/up", data=body).prepare()
        assert prepared.headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in prepared.headers
        assert id(prepared.body) == id(body)  # streamed as it is, not read into memory
        assert len(joined(body)) == len(body) == body.sent


def test_blocks_are_curls_64_kib_in_one_reused_buffer(tmp_path: Path) -> None:
    # 1 MiB blocks cost the server more CPU per GiB than curl's 64 KiB (multipart.py's comment)
    assert BLOCK_SIZE == 64 * 1024
    with open_with(tmp_path, os.urandom(3 * BLOCK_SIZE + 10)) as fh:
        body = MultipartBody([], fh, "f")
        sizes, buffers = [], set()
        for block in body:
            sizes.append(len(block))
            buffers.add(id(block.obj))
    assert sizes[:3] == [BLOCK_SIZE] * 3  # the head rides in the first block
    assert sum(sizes) == len(body) and len(sizes) == 4
    assert len(buffers) == 1  # nothing but the one buffer of BLOCK_SIZE bytes is ever held


def test_the_tail_goes_alone_when_the_last_block_is_full(tmp_path: Path) -> None:
    with open_with(tmp_path, b"") as fh:
        body = MultipartBody([], fh, "f", block_size=1)
        head_len = len(body) - len(b"\r\n--" + body.boundary.encode() + b"--\r\n")
    with open_with(tmp_path, b"z" * 10) as fh:
        body = MultipartBody([], fh, "f", block_size=head_len + 10)
        blocks = [bytes(b) for b in body]
    assert len(blocks[0]) == head_len + 10
    assert blocks[1] == b"\r\n--" + body.boundary.encode() + b"--\r\n"


def test_rewind_and_a_second_iteration_send_the_same_body_again(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    with open_with(tmp_path, data) as fh:
        body = MultipartBody(FIELDS, fh, "f", block_size=1000)
        first = iter(body)
        broken = bytes(next(first)) + bytes(next(first))  # a try that broke off after two blocks
        assert body.sent == len(broken)
        body.rewind()
        assert body.sent == 0
        again = joined(body)
        assert joined(body) == again == reference(FIELDS, "f", data, body.boundary)
        assert again.startswith(broken)


def test_an_interrupt_stops_before_the_next_block(tmp_path: Path) -> None:
    stop = threading.Event()
    with open_with(tmp_path, os.urandom(10_000)) as fh:
        body = MultipartBody([], fh, "f", block_size=1000, interrupt=stop)
        blocks = iter(body)
        next(blocks)
        stop.set()
        with pytest.raises(Interrupted):
            next(blocks)
        with pytest.raises(Interrupted):  # a retry does not start either
            next(iter(body))


def test_a_file_that_shrinks_while_sent_fails_the_upload(tmp_path: Path) -> None:
    with open_with(tmp_path, os.urandom(10_000)) as fh:
        body = MultipartBody([], fh, "f", block_size=1000)
        blocks = iter(body)
        next(blocks)
        os.truncate(tmp_path / "result.h5", 5000)
        with pytest.raises(TransferError, match="shrank"):
            for _ in blocks:
                pass


def test_a_file_that_grows_sends_the_announced_length(tmp_path: Path) -> None:
    with open_with(tmp_path, b"12345") as fh:
        body = MultipartBody([], fh, "f")
        (tmp_path / "result.h5").write_bytes(b"1234567890")
        assert joined(body) == reference([], "f", b"12345", body.boundary)


def test_the_boundary_is_random_40_characters_of_hex_then_dashes() -> None:
    seen = {new_boundary() for _ in range(100)}
    assert len(seen) == 100
    for boundary in seen:
        assert re.fullmatch(r"[0-9a-f]{32}-{8}", boundary)


@pytest.mark.parametrize("boundary", ["", "x" * 71, "has space ", "semi;colon", "é"])
def test_a_boundary_outside_rfc_2046_is_refused(tmp_path: Path, boundary: str) -> None:
    with open_with(tmp_path, b"x") as fh, pytest.raises(ValueError, match="boundary"):
        MultipartBody([], fh, "f", boundary=boundary)
