"""Random ids (event, trace, span) from ``os.urandom``, without ``uuid``: that module loads
``platform`` (~290 KiB of RSS), and ``os.urandom`` stays safe after a SnapStart restore."""

from __future__ import annotations

import os


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as lowercase hex (8 for a span id)."""
    return os.urandom(nbytes).hex()


def uuid4_hex() -> str:
    """A version-4 UUID in hex, as ``uuid.uuid4().hex``: event ids and trace ids."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()
