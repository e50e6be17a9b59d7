"""One POST's bytes and its reply over a connected socket: the lean half of transport.py's send.

urllib3's urlopen costs per request its Retry and Timeout objects, http.client's header writes
(one validated ``putheader`` each, head and body in two writes) and reply parsing (the email
parser, two response objects, a ``makefile``). Here the head is built in one string and sent
with the body in one write, and the reply is read with a small HTTP/1.1 parser: status line,
headers, a body by Content-Length, chunks, or to the close.
"""

from __future__ import annotations

import http.client
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

MAX_HEAD = 65536  # bytes of status line and headers (http.client allows 100 lines of 64 KiB)
BODY_KEPT = 4096  # bytes of a reply body kept (only an error's first 200 are shown); the rest is read and dropped
JOIN_BELOW = 65536  # a body this small goes out in the same write as the head
_RECV = 16384

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab (http.client refuses CR/LF)
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_OWN = frozenset(("host", "accept-encoding", "content-length", "transfer-encoding"))


def encode_head(target: str, fixed: str, headers: Mapping[str, str], length: int, agent: str) -> Optional[bytes]:
    """The request head urllib3 would write for a POST of ``length`` bytes (request line, then
    ``fixed``: Host and Accept-Encoding, then Content-Length, a default User-Agent, ``headers``);
    None if anything in it is unusual (urllib3 then writes it, or refuses it, as before)."""
    if _BAD_TARGET.search(target):
        return None
    parts = ["POST ", target, " HTTP/1.1\r\n", fixed, "Content-Length: %d\r\n" % length]
    has_agent = False
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return None
        lower = name.lower()
        if lower in _OWN or not _TOKEN.match(name) or _BAD_VALUE.search(value):
            return None
        if lower == "user-agent":
            has_agent = True
        parts.append("%s: %s\r\n" % (name, value))
    if not has_agent:
        parts.insert(5, "User-Agent: %s\r\n" % agent)
    parts.append("\r\n")
    try:
        return "".join(parts).encode("latin-1")
    except UnicodeEncodeError:
        return None


def fixed_head(pool: Any) -> str:
    """The Host and Accept-Encoding lines http.client writes for the connections of urllib3's ``pool``."""
    conn = pool.ConnectionCls(host=pool.host, port=pool.port)
    conn.putrequest("POST", "/")
    lines = [line.decode("latin-1") for line in conn._buffer[1:]]
    conn._buffer.clear()
    return "".join(line + "\r\n" for line in lines)


class BadLength(ValueError):
    """A reply's Content-Length is no number (urllib3 refuses it with InvalidHeader)."""


class Reply:
    __slots__ = ("status", "headers", "body", "keep")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes, keep: bool) -> None:
        self.status = status
        self.headers = headers  # names in lower case; a repeated name's values joined with ", " (as urllib3's)
        self.body = body  # at most BODY_KEPT bytes
        self.keep = keep  # the connection may carry another request


class _Reader:
    """Buffered reads from a socket; EOF raises http.client's exceptions, as its parser would."""

    def __init__(self, sock: object) -> None:
        self.recv = sock.recv  # type: ignore[attr-defined]
        self.buf = b""

    def more(self) -> bool:
        data = self.recv(_RECV)
        if not data:
            return False
        self.buf = self.buf + data if self.buf else data
        return True

    def head(self, first: bool) -> Tuple[bytes, List[bytes]]:
        """The status line and header lines of the next head."""
        while True:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                self.buf = buf[end + 4:]
                lines = buf[:end].split(b"\r\n")
                return lines[0], lines[1:]
            end = buf.find(b"\n\n")  # bare LF line ends, as http.client tolerates
            if end >= 0:
                self.buf = buf[end + 2:]
                lines = [line.rstrip(b"\r") for line in buf[:end].split(b"\n")]
                return lines[0], lines[1:]
            if len(buf) > MAX_HEAD:
                raise http.client.LineTooLong("reply head")
            if not self.more():
                if first and not buf:
                    raise http.client.RemoteDisconnected("Remote end closed connection without response")
                raise http.client.IncompleteRead(buf)

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                out, self.buf = self.buf[:end], self.buf[end + 1:]
                return out.rstrip(b"\r")
            if len(self.buf) > MAX_HEAD:
                raise http.client.LineTooLong("chunk size")
            if not self.more():
                raise http.client.IncompleteRead(self.buf)

    def exact(self, count: int, kept: List[bytes], room: int) -> int:
        """Read ``count`` bytes, keeping up to ``room`` of them in ``kept``; returns the room left."""
        while count > 0:
            if not self.buf and not self.more():
                raise http.client.IncompleteRead(b"", count)
            piece = self.buf[:count]
            self.buf = self.buf[count:]
            count -= len(piece)
            if room > 0:
                kept.append(piece[:room])
                room -= len(kept[-1])
        return room

    def rest(self, kept: List[bytes], room: int) -> None:
        while True:
            if room > 0 and self.buf:
                kept.append(self.buf[:room])
                room -= len(kept[-1])
            self.buf = b""
            if not self.more():
                return


def read_reply(sock: object, on_head: object = None) -> Reply:
    """Read one reply from ``sock`` (1xx heads skipped); ``on_head()`` is called once the final
    head is in. Raises http.client's exceptions for a malformed or cut-off reply, and the
    socket's own errors (timeouts included)."""
    reader = _Reader(sock)
    first = True
    while True:
        line, lines = reader.head(first)
        first = False
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1"))
        status = int(parts[1])
        if status >= 200 or status == 101:
            break
    lowered: Dict[str, str] = {}
    name = ""
    for raw in lines:
        text = raw.decode("latin-1")
        if text[:1] in (" ", "\t") and name:  # an obsolete folded continuation
            lowered[name] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep:
            name = ""
            continue
        name, value = name.strip().lower(), value.strip()
        lowered[name] = lowered[name] + ", " + value if name in lowered else value
    if on_head is not None:
        on_head()  # type: ignore[operator]
    connection = lowered.get("connection", "").lower()
    if parts[0] == b"HTTP/1.0":
        keep = "keep-alive" in connection or "keep-alive" in lowered
    else:
        keep = "close" not in connection
    kept: List[bytes] = []
    encoding = lowered.get("transfer-encoding", "").lower()
    if status in (101, 204, 304):
        keep = keep and status != 101
    elif encoding.rsplit(",", 1)[-1].strip() == "chunked":
        room = BODY_KEPT
        while True:
            size_line = reader.line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.IncompleteRead(b"") from None
            if size == 0:
                while reader.line():  # trailers, up to the blank line
                    pass
                break
            room = reader.exact(size, kept, room)
            if reader.line():
                raise http.client.IncompleteRead(b"")
    elif "content-length" in lowered and not encoding:
        values = {v.strip() for v in lowered["content-length"].split(",")}
        length = values.pop() if len(values) == 1 else ""
        if not length.isdigit():
            raise BadLength("invalid Content-Length %r" % lowered["content-length"])
        reader.exact(int(length), kept, BODY_KEPT)
    else:
        reader.rest(kept, BODY_KEPT)  # the body runs to the close
        keep = False
    if reader.buf:
        keep = False  # bytes past the reply: the connection is out of step
    return Reply(status, lowered, b"".join(kept), keep)
