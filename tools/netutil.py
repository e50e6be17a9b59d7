"""Loopback networking helpers shared by the tools and the tests: a free port, and the
request-body reader of the emulator's, the fake upstream's and the API stub's HTTP servers."""

from __future__ import annotations

import random
import socket
from typing import Any, BinaryIO, List, Optional, Set

#: Defaults of the body reader (callers with other limits pass their own).
MAX_CHUNKS = 100_000
MAX_LINE = 8192
MAX_TRAILER_LINES = 100


#: Where free_port() draws from: below the kernel's ephemeral range, so that between the moment it
#: hands a port out and the moment its user binds it, no bind to port 0 (another server of the
#: test) and no outgoing connection can take it (seen: the emulator's API server got the port
#: chosen for the extension, which then found it taken and went inert).
PORT_FLOOR = 15000
_handed_out: Set[int] = set()


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago, outside the ephemeral range and not
    handed out before by this process; a port from the kernel (port 0) if none is found."""
    top = _ephemeral_floor() - 1
    for _ in range(200):
        if top <= PORT_FLOOR:
            break
        port = random.randint(PORT_FLOOR, top)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BodyError(ValueError):
    """A request body that cannot be read.

    ``status`` is the HTTP status worth answering with (400, 413, 501), or None when the
    connection is broken (truncated body, overlong line) and no reply makes sense.
    """

    def __init__(self, message: str, status: Optional[int]) -> None:
        super().__init__(message)
        self.status = status


def read_chunked(
    rfile: BinaryIO,
    max_bytes: int,
    max_chunks: int = MAX_CHUNKS,
    max_line: int = MAX_LINE,
    max_trailer_lines: int = MAX_TRAILER_LINES,
) -> bytes:
    """Read a ``Transfer-Encoding: chunked`` body (trailers skipped); BodyError if malformed."""
    parts: List[bytes] = []
    total = 0
    for _ in range(max_chunks):
        line = rfile.readline(max_line + 1)
        if not line or len(line) > max_line:
            raise BodyError("truncated chunk size line", None)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BodyError("bad chunk size", 400) from None
        if size < 0:
            raise BodyError("bad chunk size", 400)
        if size == 0:
            for _ in range(max_trailer_lines):
                trailer = rfile.readline(max_line + 1)
                if not trailer or trailer in (b"\r\n", b"\n"):
                    return b"".join(parts)
            raise BodyError("too many trailer lines", None)
        total += size
        if total > max_bytes:
            raise BodyError("request body too large", 413)
        chunk = rfile.read(size)
        if len(chunk) != size:
            raise BodyError("truncated chunk", None)
        parts.append(chunk)
        if rfile.readline(3).strip():  # CRLF after the chunk data
            raise BodyError("bad chunk framing", 400)
    raise BodyError("too many chunks", None)


def read_body(rfile: BinaryIO, headers: Any, max_bytes: int, max_chunks: int = MAX_CHUNKS,
              max_line: int = MAX_LINE, max_trailer_lines: int = MAX_TRAILER_LINES) -> bytes:
    """The body of a request whose ``headers`` (an ``email.message.Message``) were parsed:
    chunked or ``Content-Length`` (none: empty). BodyError if malformed or over ``max_bytes``."""
    te = headers.get("Transfer-Encoding", "")
    if te:
        if te.strip().lower() != "chunked":
            raise BodyError("unsupported transfer-encoding", 501)
        return read_chunked(rfile, max_bytes, max_chunks, max_line, max_trailer_lines)
    cl = headers.get("Content-Length")
    if cl is None:
        return b""
    try:
        length = int(cl.strip())
    except ValueError:
        raise BodyError("bad content-length", 400) from None
    if length < 0:
        raise BodyError("bad content-length", 400)
    if length > max_bytes:
        raise BodyError("request body too large", 413)
    data = rfile.read(length) if length else b""
    if len(data) != length:
        raise BodyError("truncated body", None)
    return data
