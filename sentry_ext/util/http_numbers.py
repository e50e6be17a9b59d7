"""Numbers in HTTP heads (Content-Length, status codes, ports), parsed the one strict way.

``int()`` alone accepts signs, "_", surrounding spaces and other scripts' digits ('١٢' is 12), and
raises past 4,300 digits: a hostile header must be a clean refusal, never an exception in a handler.
Imports nothing: ``lambda_api`` uses it before the first /event/next.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

MAX_LENGTH_DIGITS = 12  # up to 999 GB: far past every body cap here; a longer value is not a size
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_number(text: str, max_digits: int, base: int = 10) -> Optional[int]:
    """The non-negative integer ``text`` spells in ASCII digits (surrounding whitespace ignored),
    or None: empty, longer than ``max_digits``, or any other character."""
    text = text.strip()
    if not 0 < len(text) <= max_digits or not text.isascii():
        return None
    if not (text.isdigit() if base == 10 else set(text) <= _HEX_DIGITS):  # ASCII: isdigit is 0-9
        return None
    return int(text, base)


def content_length(text: str) -> Optional[int]:
    """A Content-Length value, or None if it is not 1 to MAX_LENGTH_DIGITS ASCII digits."""
    return parse_number(text, MAX_LENGTH_DIGITS)
