"""The bounded request-header reader of the local HTTP server."""

from __future__ import annotations

import io

import pytest

from sentry_ext.util.headers import MAX_SECTION, HeaderError, read_headers


def _reader(data: bytes, buffer_size: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
    """A buffered reader, as a socket's ``makefile("rb")`` gives the HTTP server."""
    return io.BufferedReader(io.BytesIO(data), buffer_size)


def test_read_headers_multi_dict() -> None:
    headers = read_headers(_reader(b"Content-Length: 3\r\nX-A: 1\r\nx-a: 2\r\nHost:h\r\n\r\nbody"))
    assert headers == {"content-length": "3", "x-a": "1", "host": "h"}  # names in lower case, first values
    assert headers.get_all("x-a") == ["1", "2"] and headers.get_all("host") == ["h"]
    assert headers.get_all("missing") is None and headers.repeated == {"x-a": ["1", "2"]}


@pytest.mark.parametrize("data,status", [
    (b"K: " + b"v" * 70000 + b"\r\n\r\n", 431),
    (b"K: v\r\n" * 101 + b"\r\n", 431),
    (b"K: v\r\n folded\r\n\r\n", 400),
    (b"no colon here\r\n\r\n", 400),
    (b"Bad Name: v\r\n\r\n", 400),
    (b"User-Agent: a\r\x11b\r\n\r\n", 400),  # a bare CR: http.client would refuse to forward it
    (b"User-Agent: a\rb\n\n", 400),
    (b"K: a\x00b\r\n\r\n", 400),
])
def test_read_headers_rejects(data: bytes, status: int) -> None:
    with pytest.raises(HeaderError) as err:
        read_headers(_reader(data))
    assert err.value.status == status


@pytest.mark.parametrize("buffer_size", [1, 2, 3, 5, 8192])
@pytest.mark.parametrize("head", [b"Host: h\r\nX-A: 1\r\n\r\n", b"Host: h\nX-A: 1\n\n", b"Host: h\r\nX-A: 1\n\r\n"])
def test_read_headers_finds_the_section_end_in_any_segmentation(head: bytes, buffer_size: int) -> None:
    # However the section arrives (a byte at a time, the blank line split between reads), the
    # reader stops right after it and leaves the body unread.
    rfile = _reader(head + b"\r\nbody", buffer_size)
    headers = read_headers(rfile)
    assert headers == {"host": "h", "x-a": "1"}
    assert rfile.read() == b"\r\nbody"


@pytest.mark.parametrize("head", [b"\r\nbody", b"\nbody"])
def test_read_headers_empty_section(head: bytes) -> None:
    rfile = _reader(head)
    assert len(read_headers(rfile)) == 0 and rfile.read() == b"body"


def test_read_headers_at_end_of_input_returns_what_came() -> None:
    assert read_headers(_reader(b"Host: h\r\nX-A: 1")) == {"host": "h", "x-a": "1"}
    assert len(read_headers(_reader(b""))) == 0


def test_read_headers_section_cap_counts_the_blank_line() -> None:
    filler = b"K: " + b"v" * (MAX_SECTION - 7) + b"\r\n"  # with the blank line: exactly MAX_SECTION
    assert read_headers(_reader(filler + b"\r\n")).get("k") == "v" * (MAX_SECTION - 7)
    with pytest.raises(HeaderError) as err:
        read_headers(_reader(b"X" + filler + b"\r\n"))
    assert err.value.status == 431
