"""One accepted SDK request: what ingest queues, the forwarder sends and the spool keeps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional


@dataclass
class Request:
    """One accepted SDK request, forwarded to ``upstream_path`` with exactly these headers and body."""

    upstream_path: str  # "/api/<project>/<endpoint>/" plus "?query" when there is one
    headers: Dict[str, str]
    body: bytes
    public_key: str
    received_at: float = field(default_factory=time.time)  # wall clock: survives spooling
    attempts: int = 0
    event_id: Optional[str] = None

    @property
    def size(self) -> int:
        return len(self.body) + 256
