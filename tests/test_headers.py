"""The fast header parsers against the stdlib's email-based ones."""

from __future__ import annotations

import http.client
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentry_ext.util.headers import HeaderError, parse_http_client_headers, read_headers

PIECES = [b"a", b"B", b":", b" ", b"\t", b"\r\n", b"\n", b"\r", b"-", b"x", b"\xe9", b"From ", b"\x00", b"Content-Type"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40), st.binary(max_size=30))
def test_http_client_drop_in_matches_the_stdlib(pieces: list, noise: bytes) -> None:
    data = b"".join(pieces) + noise + b"\r\n\r\n"
    expected = http.client.parse_headers(io.BytesIO(data))
    got = parse_http_client_headers(io.BytesIO(data))
    assert got.items() == expected.items()
    assert type(got) is type(expected)


def test_http_client_drop_in_limits() -> None:
    with pytest.raises(http.client.LineTooLong):
        parse_http_client_headers(io.BytesIO(b"K: " + b"v" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        parse_http_client_headers(io.BytesIO(b"K: v\r\n" * 101 + b"\r\n"))


def test_read_headers_multi_dict() -> None:
    headers = read_headers(io.BytesIO(b"Content-Length: 3\r\nX-A: 1\r\nx-a: 2\r\nHost:h\r\n\r\nbody"))
    assert headers.get("content-length") == "3" and headers["HOST"] == "h"
    assert headers.get_all("X-A") == ["1", "2"] and headers.get_all("missing") is None
    assert "x-a" in headers and "nope" not in headers and len(headers) == 4


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
        read_headers(io.BytesIO(data))
    assert err.value.status == status
