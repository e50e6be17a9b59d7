"""The bounded request-header reader of the local HTTP server."""

from __future__ import annotations

import io

import pytest

from sentry_ext.util.headers import HeaderError, read_headers


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
