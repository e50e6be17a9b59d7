"""Request headers of local clients read within bounds, without ``email.parser``.

``http.server`` parses headers with ``email.parser`` and no limit on the section's size; SDK
requests' headers are small and simple, so a bounded section parser does the job.
"""

from __future__ import annotations

from typing import BinaryIO, Dict, List, Optional

MAX_HEADERS = 100
MAX_SECTION = 32 * 1024  # request headers of an SDK post are well under 1 KiB


class HeaderError(ValueError):
    """A header section that is too long, has too many lines, or is malformed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers(dict):  # type: ignore[type-arg]
    """A request's headers: lower-case name -> its first value (a dict: ``get`` is ``dict.get``,
    and names are looked up in lower case); ``get_all`` has every value of a repeated name."""

    __slots__ = ("repeated",)

    def __init__(self) -> None:
        super().__init__()
        self.repeated: Dict[str, List[str]] = {}  # name -> all its values, for names given more than once

    def get_all(self, name: str, failobj: Optional[List[str]] = None) -> Optional[List[str]]:
        """Every value of ``name`` (lower case), in order; ``failobj`` if there is none."""
        if name not in self:
            return failobj
        return list(self.repeated.get(name) or (self[name],))


def read_headers(rfile: BinaryIO) -> Headers:
    """Read the header section up to its blank line from a buffered reader (``peek``); raises
    HeaderError (431 or 400). At the end of input, the lines read so far are the section.

    The section is found in what the reader has buffered (an SDK's post comes in one segment) and
    parsed whole: no line-by-line reads. It is capped at MAX_SECTION bytes: 64 connections
    holding 100 lines of 64 KiB each would be 400 MB, more than a small function has.
    """
    data = b""
    for _ in range(MAX_SECTION + 2):  # each turn returns, raises, or takes at least one byte
        chunk = rfile.peek(1)  # type: ignore[attr-defined]  # what is buffered: one read if nothing is
        if not chunk:
            return _parse(data)
        seen = len(data)
        data += chunk
        end = _section_end(data, max(seen - 2, 0))
        if end >= 0:
            if end > MAX_SECTION:
                break
            rfile.read(end - seen)
            return _parse(data[:end])
        rfile.read(len(chunk))
        if len(data) > MAX_SECTION:
            break
    raise HeaderError(431, "header section larger than %d bytes" % MAX_SECTION)


def _section_end(data: bytes, start: int) -> int:
    """Where the section in ``data`` ends (just past its blank line), searching from ``start``; -1 if not in it."""
    if data[:1] == b"\n":
        return 1
    if data[:2] == b"\r\n":
        return 2
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _parse(section: bytes) -> Headers:
    if b"\x00" in section or section.count(b"\r") != section.count(b"\r\n"):
        # RFC 9110 5.5: reject, never pass on (http.client refuses a bare CR when forwarding)
        raise HeaderError(400, "CR or NUL inside a header line")
    lines = section.decode("iso-8859-1").replace("\r", "").split("\n")
    while lines and not lines[-1]:
        lines.pop()  # the blank line (and the final newline)
    if len(lines) > MAX_HEADERS:
        raise HeaderError(431, "too many headers")
    headers = Headers()
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise HeaderError(400, "obsolete header line folding")
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            raise HeaderError(400, "malformed header line")
        name = name.lower()
        if name in headers:
            headers.repeated.setdefault(name, [headers[name]]).append(value.strip())
        else:
            headers[name] = value.strip()
    return headers
