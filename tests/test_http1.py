"""delivery/http1.py: the request head transport.py writes itself, and the reply parser."""

from __future__ import annotations

import http.client
from typing import List

import pytest

from sentry_ext.delivery import http1

FIXED = "Host: o1.example\r\nAccept-Encoding: identity\r\n"


class _Sock:
    def __init__(self, pieces: List[bytes]) -> None:
        self.pieces = list(pieces)

    def recv(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def _read(*pieces: bytes) -> http1.Reply:
    return http1.read_reply(_Sock(list(pieces)))


def test_the_head_is_what_urllib3_writes() -> None:
    head = http1.encode_head("/api/1/envelope/", FIXED, {"Content-Type": "x", "User-Agent": "sdk/1"}, 5, "u3")
    assert head == (b"POST /api/1/envelope/ HTTP/1.1\r\nHost: o1.example\r\nAccept-Encoding: identity\r\n"
                    b"Content-Length: 5\r\nContent-Type: x\r\nUser-Agent: sdk/1\r\n\r\n")
    head = http1.encode_head("/p", FIXED, {"Content-Type": "x"}, 0, "u3")
    assert head is not None and b"Content-Length: 0\r\nUser-Agent: u3\r\nContent-Type: x\r\n\r\n" in head


@pytest.mark.parametrize("target, headers", [
    ("/p q", {}), ("/p\r\n", {}), ("/p", {"X": "a\r\nb"}), ("/p", {"X y": "1"}), ("/p", {"Host": "h"}),
    ("/p", {"content-length": "3"}), ("/p", {"X": "\u20ac"}),
])
def test_anything_unusual_is_left_to_urllib3(target: str, headers: dict) -> None:
    assert http1.encode_head(target, FIXED, headers, 1, "u3") is None


def test_a_reply_by_length_in_pieces_keeps_the_connection() -> None:
    reply = _read(b"HTTP/1.1 200 OK\r\nContent-Len", b"gth: 4\r\nX-A: 1\r\nx-a: 2\r\n\r\n{", b"}\r\n")
    assert (reply.status, reply.body, reply.keep) == (200, b"{}\r\n", True)
    assert reply.headers == {"content-length": "4", "x-a": "1, 2"}


def test_chunked_close_delimited_and_1xx() -> None:
    reply = _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n")
    assert (reply.status, reply.body, reply.keep) == (400, b"abcde", True)
    reply = _read(b"HTTP/1.0 500 Oops\n\nall", b" of it")
    assert (reply.status, reply.body, reply.keep) == (500, b"all of it", False)
    reply = _read(b"HTTP/1.1 204 No\r\nConnection: close\r\n\r\n")
    assert (reply.status, reply.keep) == (204, False)
    assert not _read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy").keep  # bytes past the reply


def test_a_long_body_is_read_whole_and_kept_bounded() -> None:
    reply = _read(b"HTTP/1.1 413 Big\r\nContent-Length: 20000\r\n\r\n", b"a" * 10000, b"b" * 10000)
    assert reply.body == b"a" * http1.BODY_KEPT and reply.keep


def test_a_cut_off_reply_raises_what_http_client_raises() -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        _read()
    with pytest.raises(http.client.IncompleteRead):
        _read(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(http.client.IncompleteRead):
        _read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(http.client.BadStatusLine):
        _read(b"SSH-2.0\r\n\r\n")
    with pytest.raises(http1.BadLength):
        _read(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n")
