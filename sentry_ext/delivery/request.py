"""One accepted SDK request: what ingest queues, the forwarder sends and the spool keeps."""

from __future__ import annotations

import time
from typing import Dict, Optional

from ..util.records import Record


class Request(Record):
    """One accepted SDK request, forwarded to ``upstream_path`` with exactly these headers and body."""

    __slots__ = ("upstream_path", "headers", "body", "public_key", "received_at", "attempts", "event_id")

    def __init__(self, upstream_path: str, headers: Dict[str, str], body: bytes, public_key: str,
                 received_at: Optional[float] = None, attempts: int = 0, event_id: Optional[str] = None) -> None:
        self.upstream_path = upstream_path  # "/api/<project>/<endpoint>/" plus "?query" when there is one
        self.headers = headers
        self.body = body
        self.public_key = public_key
        self.received_at = time.time() if received_at is None else received_at  # wall clock: survives spooling
        self.attempts = attempts
        self.event_id = event_id

    @property
    def size(self) -> int:
        return len(self.body) + 256

    @property
    def encoding(self) -> str:
        """The body's content-encoding, normalised ("" when there is none): what decoding it needs."""
        return (self.headers.get("content-encoding") or "").strip().lower()
