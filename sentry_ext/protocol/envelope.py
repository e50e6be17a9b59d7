"""Sentry envelopes: strict parsing of untrusted input, serialization, rate-limit categories."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..util import json_text

# Item type -> rate-limit data category: sentry-python's ``Item.data_category`` (2.x, with
# trace_metric), plus the types only other SDKs send (replay, feedback, metric buckets), as Relay names them.
CATEGORIES: Dict[str, str] = {
    "event": "error",
    "transaction": "transaction",
    "span": "span",
    "session": "session",
    "sessions": "session",
    "attachment": "attachment",
    "log": "log_item",
    "trace_metric": "trace_metric",
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

# Non-envelope endpoints (first path segment after /api/<project>/) -> category of what they carry.
ENDPOINT_CATEGORIES: Dict[str, str] = {
    "store": "error",
    "minidump": "error",
    "unreal": "error",
    "security": "security",
    "csp-report": "security",
    "nel": "security",
    "cron": "monitor",
    "events": "attachment",  # /api/<id>/events/<event_id>/attachments/
    "otlp": "span",
}

# Every category a limit can usefully name: the ones items and endpoints map to, and the byte
# counts client reports add for logs and trace metrics.
KNOWN_CATEGORIES = (frozenset(CATEGORIES.values()) | frozenset(ENDPOINT_CATEGORIES.values())
                    | {"default", "log_byte", "trace_metric_byte"})

class EnvelopeError(ValueError):
    """Raised for an envelope that does not follow the format."""


def category(item_type: str) -> str:
    """Rate-limit data category of an item type; ``default`` for unknown types."""
    return CATEGORIES.get(item_type, "default")


def endpoint_of(upstream_path: str) -> str:
    """The endpoint of ``/api/<project>/<endpoint>/[?query]``: ``envelope``, ``store``, ``cron/slug``, ...

    The legacy ``/api/store/`` gives ``store``.
    """
    parts = upstream_path.split("?", 1)[0].strip("/").split("/", 2)
    if len(parts) == 2 and parts[1] == "store":
        return "store"
    return parts[2].rstrip("/") if len(parts) == 3 else ""


def endpoint_category(endpoint: str) -> Optional[str]:
    """Category of a non-envelope endpoint such as ``store`` or ``cron/slug``; None if unknown."""
    return ENDPOINT_CATEGORIES.get(endpoint.split("/", 1)[0])


def json_object(line: bytes, what: str) -> Dict[str, Any]:
    """``line`` parsed as ``json.loads(line)`` parses it, if it is a JSON object; EnvelopeError otherwise."""
    try:
        if line[:3] == b"\xef\xbb\xbf" or b"\x00" in line[:4]:
            value = json.loads(line)  # a BOM, or UTF-16/32: json.loads finds the encoding
        else:
            value = json_text.loads(line.decode("utf-8", "surrogatepass"))  # as json.loads decodes it
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EnvelopeError("%s is %s" % (what, "not valid JSON" if line.strip() else "empty")) from None
    if not isinstance(value, dict):
        raise EnvelopeError("%s is not a JSON object" % what)
    return value


def parse_header(line: bytes) -> Dict[str, Any]:
    """Parse the envelope header line; raises EnvelopeError."""
    return json_object(line, "envelope header")


class Item:
    """One envelope item: its header (unknown keys kept) and payload bytes."""

    __slots__ = ("headers", "payload", "header_line")

    def __init__(self, headers: Dict[str, Any], payload: bytes, header_line: Optional[bytes] = None) -> None:
        self.headers = headers
        self.payload = payload
        self.header_line = header_line  # as parsed (not compared, not shown)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        return self.headers == other.headers and self.payload == other.payload

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Item(headers=%r, payload=%r)" % (self.headers, self.payload)

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    @property
    def data_category(self) -> str:
        return category(self.type)


class Envelope:
    """A parsed envelope; ``raw`` keeps the exact bytes it was parsed from."""

    __slots__ = ("headers", "items", "raw", "header_line")

    def __init__(self, headers: Dict[str, Any], items: Optional[List[Item]] = None, raw: Optional[bytes] = None,
                 header_line: Optional[bytes] = None) -> None:
        self.headers = headers
        self.items: List[Item] = items if items is not None else []
        self.raw = raw
        self.header_line = header_line  # as parsed (not compared, not shown)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return (self.headers, self.items, self.raw) == (other.headers, other.items, other.raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Envelope(headers=%r, items=%r, raw=%r)" % (self.headers, self.items, self.raw)

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
            item_headers = json_object(line, "item header")
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
            items.append(Item(item_headers, payload, line))
        return cls(headers, items, data, header_line)

    def serialize(self) -> bytes:
        """Envelope bytes with explicit ``length`` on every item; unchanged header lines are kept verbatim."""
        out = [header_bytes(self.headers, self.header_line), b"\n"]
        for item in self.items:
            headers, line = item.headers, item.header_line
            length = headers.get("length")
            if isinstance(length, bool) or length != len(item.payload):
                headers, line = dict(headers, length=len(item.payload)), None
            out.append(header_bytes(headers, line))
            out.append(b"\n")
            out.append(item.payload)
            out.append(b"\n")
        return b"".join(out)


def header_bytes(headers: Dict[str, Any], line: Optional[bytes]) -> bytes:
    # Re-dumping JSON can change key order, escapes and number spelling: keep the original
    # line whenever it still says the same thing.
    if line is not None:
        try:
            if json_object(line, "header") == headers:
                return line
        except EnvelopeError:
            pass
    return json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
