"""``json.loads`` for text in one call: json's own scanner (C), without the three Python layers
(``loads``, ``JSONDecoder.decode``, ``raw_decode``) it goes through per document. The hot paths
parse one document per SDK post and per Telemetry batch."""

from __future__ import annotations

import json
from typing import Any

_scan = json.JSONDecoder().scan_once
_SPACE = " \t\n\r"  # JSON's whitespace, as json.loads skips it around the value


def loads(text: str) -> Any:
    """``json.loads(text)``: the same value, or ValueError (RecursionError past the C stack's depth)."""
    text = text.strip(_SPACE)
    try:
        value, end = _scan(text, 0)
    except StopIteration:  # no value at the start
        raise ValueError("Expecting value") from None
    if end != len(text):
        raise ValueError("Extra data")
    return value
