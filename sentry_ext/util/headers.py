"""Fast HTTP header parsing without ``email.parser``.

``http.server`` and ``http.client`` parse headers with ``email.parser``: about 40 % of the ingest
CPU per post, and a fifth of all the CPU the extension spends forwarding (urllib3 reads every
upstream response through ``http.client``). Headers here are small and simple, so a plain line
reader does the same job.
"""

from __future__ import annotations

import http.client
import re
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

MAX_LINE = 65536
MAX_HEADERS = 100
MAX_SECTION = 32 * 1024  # request headers of an SDK post are well under 1 KiB


class HeaderError(ValueError):
    """A header section that is too long, has too many lines, or is malformed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Case-insensitive multi-dict with the part of ``email.message.Message`` that http.server uses."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: List[Tuple[str, str]]) -> None:
        self._items = items
        self._index: Dict[str, List[str]] = {}
        for name, value in items:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, failobj: Optional[List[str]] = None) -> Optional[List[str]]:
        values = self._index.get(name.lower())
        return list(values) if values else failobj

    def __getitem__(self, name: str) -> Optional[str]:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def items(self) -> List[Tuple[str, str]]:
        return list(self._items)

    def keys(self) -> List[str]:
        return [name for name, _ in self._items]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    def __str__(self) -> str:
        return "".join("%s: %s\n" % item for item in self._items)


def read_headers(rfile: BinaryIO) -> Headers:
    """Read header lines up to the blank line; raises HeaderError (431 or 400).

    The whole section is capped at MAX_SECTION bytes: 64 connections holding 100 lines of 64 KiB
    each would be 400 MB, more than a small function has.
    """
    items: List[Tuple[str, str]] = []
    budget = MAX_SECTION
    for _ in range(MAX_HEADERS + 1):
        line = rfile.readline(min(MAX_LINE, budget) + 1)
        budget -= len(line)
        if budget < 0:
            raise HeaderError(431, "header section larger than %d bytes" % MAX_SECTION)
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        if line[:1] in (b" ", b"\t"):
            raise HeaderError(400, "obsolete header line folding")
        text = line.decode("iso-8859-1")
        if "\r" in text.rstrip("\r\n") or "\x00" in text:
            # RFC 9110 5.5: reject, never pass on (http.client refuses a bare CR when forwarding)
            raise HeaderError(400, "CR or NUL inside a header line")
        name, sep, value = text.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            raise HeaderError(400, "malformed header line")
        items.append((name, value.strip()))
    raise HeaderError(431, "too many headers")


# email.feedparser's test for a header line: a field name of printable ASCII but ':' (maybe
# empty), then ':'. The first line that is neither this nor a continuation ends the headers.
_FIELD = re.compile(r"[\041-\071\073-\176]*:")
_NEWLINE = re.compile(r"(\r\n|\r|\n)")
# A line that is not a plain "Name: value\r\n": no field name, a character outside the field-name
# set before the colon, a continuation, a 'From ' line, or a \r that is not the line's end.
_ODD = re.compile(r"^(?![\041-\071\073-\176]+:)|^From |\r(?!\n?$)")


def parse_http_client_headers(fp: BinaryIO, _class: Any = http.client.HTTPMessage) -> Any:
    """Drop-in for ``http.client.parse_headers``: the same headers as its compat32 email parsing
    (continuations, a bad line ending the section, 'From ' lines skipped), without email.parser."""
    lines = []
    for _ in range(MAX_HEADERS + 1):
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        lines.append(line.decode("iso-8859-1"))
    else:
        raise http.client.HTTPException("got more than %d headers" % MAX_HEADERS)
    msg = _class()
    if not any(_ODD.search(text) for text in lines):
        # The usual reply: plain "Name: value" lines. (email's behaviour for anything odder follows.)
        for text in lines:
            head, _, rest = text.partition(":")
            msg[head] = rest.lstrip(" \t").rstrip("\r\n")
        return msg
    name = None
    value = ""
    # email splits lines on \r\n, \r or \n (a bare \r is a line end to it, not to readline)
    parts = _NEWLINE.split("".join(lines))
    for text in (parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)):
        if not text:
            continue
        if text[:1] in (" ", "\t"):
            if name is not None:
                value += text  # obsolete folding: the value goes on
            continue
        if name is not None:
            msg[name] = value.rstrip("\r\n")
            name = None
        if text.startswith("From "):
            continue
        match = _FIELD.match(text)
        if match is None:
            break
        if match.end() == 1:
            continue  # ":value" has no field name: email skips the line
        name, value = text[:match.end() - 1], text[match.end():].lstrip(" \t")
    if name is not None:
        msg[name] = value.rstrip("\r\n")
    return msg


def speed_up_http_client() -> None:
    """Make ``http.client`` (hence urllib3 and http.server) use ``parse_http_client_headers``.

    Called once in the extension process, which owns its interpreter; never in a library user's.
    """
    http.client.parse_headers = parse_http_client_headers  # type: ignore[assignment]
