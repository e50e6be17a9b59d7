"""Upstream rate limits: parsing ``X-Sentry-Rate-Limits``/``Retry-After`` and a per-key store."""

from __future__ import annotations

import logging
import math
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from .envelope import KNOWN_CATEGORIES

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 60.0  # a bare 429: what Sentry's SDKs assume, so do we
MAX_LIMIT_S = 7 * 86400.0  # a garbled huge value must not silence a key for years

# category (None = all categories) -> wall-clock time until which it is limited
Limits = Dict[Optional[str], float]


def _seconds(text: str) -> Optional[float]:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_LIMIT_S)


def parse_rate_limits(header: str, now: float) -> Limits:
    """Parse ``X-Sentry-Rate-Limits`` into ``{category or None: until}``; the longest limit per category wins.

    Bad entries, unknown fields and unknown categories are ignored; a limit naming only unknown
    categories is dropped (it must not turn into a limit for everything).
    """
    limits: Limits = {}
    for entry in header.split(","):
        fields = entry.strip().split(":")
        if not fields[0]:
            continue
        seconds = _seconds(fields[0])
        if seconds is None:
            continue
        until = now + seconds
        names = [c.strip() for c in fields[1].split(";")] if len(fields) > 1 else []
        names = [c for c in names if c]
        if not names:
            targets: List[Optional[str]] = [None]
        else:
            targets = [c for c in names if c in KNOWN_CATEGORIES]
            if not targets:
                continue
        for target in targets:
            if until > limits.get(target, 0.0):
                limits[target] = until
    return limits


def parse_retry_after(value: Optional[str], now: float) -> Optional[float]:
    """``Retry-After`` (delta seconds or HTTP date) as a wall-clock time; None if absent or unparsable."""
    if value is None or not value.strip():
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return now + seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    # A date in the past means "now"; one absurdly far ahead is capped like a number would be.
    return min(max(when.timestamp(), now), now + MAX_LIMIT_S)


def _header(headers: Optional[Mapping[str, str]], name: str) -> Optional[str]:
    if not headers:
        return None
    value = headers.get(name)  # urllib3's HTTPHeaderDict: any case
    return headers.get(name.lower()) if value is None else value  # http1's replies: lower-case names


class RateLimits:
    """Thread-safe active limits per public key, expiring on the injected wall clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: Dict[str, Limits] = {}
        self._latest: Dict[str, float] = {}  # key -> latest expiry of any limit: the O(1) fast path

    def update(self, key: str, status: int, headers: Optional[Mapping[str, str]]) -> bool:
        """Learn limits from one upstream reply (any status); True if it carried any."""
        now = self._clock()
        header = _header(headers, "X-Sentry-Rate-Limits")
        if header:
            limits = parse_rate_limits(header, now)
        elif status == 429:
            until = parse_retry_after(_header(headers, "Retry-After"), now)
            limits = {None: now + DEFAULT_RETRY_AFTER_S if until is None else until}
        else:
            return False
        if not limits:
            return False
        with self._lock:
            current = self._limits.setdefault(key, {})
            fresh = [c for c in limits if current.get(c, 0.0) <= now]
            for category, until in limits.items():
                if until > current.get(category, 0.0):
                    current[category] = until
            self._latest[key] = max(current.values())
        # Every limited reply repeats the header: say it once per newly limited category.
        (log.info if fresh else log.debug)("upstream rate limit for key %s…: %s", key[:4],
                                            header or "429 for all categories")
        return True

    def now(self) -> float:
        """The store's clock (wall seconds), for callers that test many categories against one ``active``."""
        return self._clock()

    def any_active(self, key: str) -> bool:
        """True while some limit for ``key`` has not expired (no lock: a stale read only delays by one call)."""
        latest = self._latest.get(key)
        return latest is not None and latest > self._clock()

    def active(self, key: str) -> Limits:
        """``{category or None: until}`` of the unexpired limits of ``key`` (expired ones are forgotten)."""
        if not self.any_active(key):
            return {}
        now = self._clock()
        with self._lock:
            current = self._limits.get(key, {})
            for category in [c for c, until in current.items() if until <= now]:
                del current[category]
            return dict(current)

    def is_limited(self, key: str, category: Optional[str]) -> bool:
        """True if items of ``category`` (or everything) are limited for ``key`` right now."""
        return limited(self.active(key), category, self._clock())

    def header_value(self, key: str) -> str:
        """An ``X-Sentry-Rate-Limits`` value for the active limits of ``key`` (seconds rounded up); "" if none."""
        now = self._clock()
        by_seconds: Dict[int, List[Optional[str]]] = {}
        for category, until in self.active(key).items():
            # sentry-python reads the seconds with int(): never send a fraction.
            by_seconds.setdefault(max(1, math.ceil(until - now)), []).append(category)
        parts = []
        for seconds, names in sorted(by_seconds.items(), reverse=True):
            # An empty category list means all categories and covers the others of that length.
            categories = "" if None in names else ";".join(sorted(str(n) for n in names))
            parts.append("%d:%s:key" % (seconds, categories))
        return ", ".join(parts)

    def retry_after(self, key: str, categories: Optional[Iterable[str]] = None) -> int:
        """Whole seconds (at least 1) until the limits on ``categories`` (default: all) have expired."""
        now = self._clock()
        active = self.active(key)
        if categories is not None:
            wanted = set(categories)
            active = {c: u for c, u in active.items() if c is None or c in wanted}
        if not active:
            return 1
        return max(1, math.ceil(max(active.values()) - now))


def limited(active: Limits, category: Optional[str], now: float) -> bool:
    """True if ``active`` limits (from ``RateLimits.active``) cover ``category`` at ``now``."""
    return active.get(None, 0.0) > now or (category is not None and active.get(category, 0.0) > now)
