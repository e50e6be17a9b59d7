"""Request headers of local clients read within bounds, without ``email.parser``.

``http.server`` parses headers with ``email.parser`` and no limit on the section's size; SDK
requests' headers are small and simple, so a plain line reader with limits does the job.
"""

from __future__ import annotations

from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

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
