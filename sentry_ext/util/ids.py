"""Random ids (event, trace, span) from ``os.urandom``, without ``uuid`` (that module loads
``platform``, ~290 KiB of RSS; ``os.urandom`` stays safe after a SnapStart restore), and the trace-id check."""

from __future__ import annotations

import os
import re
from typing import Any

_TRACE_ID = re.compile(r"[0-9a-f]{32}\Z")


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as lowercase hex (8 for a span id)."""
    return os.urandom(nbytes).hex()


def uuid4_hex() -> str:
    """A version-4 UUID in hex, as ``uuid.uuid4().hex``: event ids and trace ids."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def valid_trace_id(value: Any) -> bool:
    """True for 32 lowercase hex characters (what Sentry accepts as ``trace_id``)."""
    return isinstance(value, str) and _TRACE_ID.match(value) is not None
