"""Sentry envelopes: strict parsing of untrusted input, serialization, rate-limit categories."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

# Item type -> rate-limit data category (sentry-python's table).
CATEGORIES: Dict[str, str] = {
    "event": "error",
    "transaction": "transaction",
    "span": "span",
    "session": "session",
    "sessions": "session",
    "attachment": "attachment",
    "log": "log_item",
    "client_report": "internal",
    "profile": "profile",
    "profile_chunk": "profile_chunk",
    "check_in": "monitor",
    "replay_event": "replay",
    "replay_recording": "replay",
    "feedback": "feedback",
    "statsd": "metric_bucket",
    "metric_buckets": "metric_bucket",
}

HEADER_LINE_LIMIT = 64 * 1024  # bytes of decoded envelope header we are willing to inspect


class EnvelopeError(ValueError):
    """Raised for an envelope that does not follow the format."""


def category(item_type: str) -> str:
    """Rate-limit data category of an item type; ``default`` for unknown types."""
    return CATEGORIES.get(item_type, "default")


def _json_object(line: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("%s is not valid JSON" % what) from None
    if not isinstance(value, dict):
        raise EnvelopeError("%s is not a JSON object" % what)
    return value


def first_line(body: bytes, encoding: str) -> bytes:
    """The envelope header line of a body, decoding gzip/deflate only as far as needed.

    Raises EnvelopeError for an undecodable body or a header line over HEADER_LINE_LIMIT.
    """
    if encoding in ("", "identity"):
        head = body[:HEADER_LINE_LIMIT + 1]
    elif encoding in ("gzip", "x-gzip", "deflate"):
        head = _inflate_prefix(body, encoding)
    else:
        raise EnvelopeError("cannot inspect a %r body" % encoding)
    end = head.find(b"\n")
    if end < 0:
        if len(head) > HEADER_LINE_LIMIT:
            raise EnvelopeError("envelope header line longer than %d bytes" % HEADER_LINE_LIMIT)
        return head
    return head[:end]


def _inflate_prefix(body: bytes, encoding: str) -> bytes:
    if encoding == "deflate":
        # RFC 9110 says zlib-wrapped; some clients send raw deflate.
        wbits = 15 if body[:1] == b"\x78" else -15
    else:
        wbits = 31
    decomp = zlib.decompressobj(wbits)
    out = b""
    pos = 0
    try:
        while pos < len(body) and len(out) <= HEADER_LINE_LIMIT and b"\n" not in out:
            out += decomp.decompress(body[pos:pos + 4096], HEADER_LINE_LIMIT + 1 - len(out))
            pos += 4096
            while decomp.unconsumed_tail and len(out) <= HEADER_LINE_LIMIT and b"\n" not in out:
                out += decomp.decompress(decomp.unconsumed_tail, HEADER_LINE_LIMIT + 1 - len(out))
    except zlib.error as exc:
        raise EnvelopeError("body is not valid %s: %s" % (encoding, exc)) from None
    return out


def parse_header(line: bytes) -> Dict[str, Any]:
    """Parse the envelope header line; raises EnvelopeError."""
    if not line.strip():
        raise EnvelopeError("envelope header is empty")
    return _json_object(line, "envelope header")


@dataclass
class Item:
    """One envelope item: its header (unknown keys kept) and payload bytes."""

    headers: Dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    @property
    def data_category(self) -> str:
        return category(self.type)


@dataclass
class Envelope:
    """A parsed envelope; ``raw`` keeps the exact bytes it was parsed from."""

    headers: Dict[str, Any]
    items: List[Item] = field(default_factory=list)
    raw: Optional[bytes] = None

    @classmethod
    def parse(cls, data: bytes) -> "Envelope":
        """Parse an (uncompressed) envelope; raises EnvelopeError on any violation."""
        end = data.find(b"\n")
        header_line = data if end < 0 else data[:end]
        headers = parse_header(header_line)
        items: List[Item] = []
        pos = len(data) if end < 0 else end + 1
        size = len(data)
        while pos < size:
            nl = data.find(b"\n", pos)
            line = data[pos:] if nl < 0 else data[pos:nl]
            if not line.strip():
                # Tolerate blank lines between items (trailing newline, CRLF-free padding).
                pos = size if nl < 0 else nl + 1
                continue
            item_headers = _json_object(line, "item header")
            if "type" not in item_headers or not isinstance(item_headers["type"], str):
                raise EnvelopeError("item header without a string type")
            pos = size if nl < 0 else nl + 1
            length = item_headers.get("length")
            if length is not None:
                if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                    raise EnvelopeError("item length must be a non-negative integer")
                if pos + length > size:
                    raise EnvelopeError("item payload truncated (%d of %d bytes)" % (size - pos, length))
                payload = data[pos:pos + length]
                pos += length
                if pos < size:
                    if data[pos:pos + 1] != b"\n":
                        raise EnvelopeError("item payload not followed by a newline")
                    pos += 1
            else:
                nl = data.find(b"\n", pos)
                payload = data[pos:] if nl < 0 else data[pos:nl]
                pos = size if nl < 0 else nl + 1
            items.append(Item(item_headers, payload))
        return cls(headers, items, data)

    def serialize(self) -> bytes:
        """Envelope bytes with explicit ``length`` on every item."""
        out = [json.dumps(self.headers, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), b"\n"]
        for item in self.items:
            headers = dict(item.headers)
            headers["length"] = len(item.payload)
            out.append(json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
            out.append(b"\n")
            out.append(item.payload)
            out.append(b"\n")
        return b"".join(out)
