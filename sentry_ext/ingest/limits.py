"""Applies active upstream rate limits at ingest: refuse with 429, remove limited items, or pass."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ..protocol.discards import DECODE_LIMIT, Discards, scan_outcomes
from ..protocol.envelope import EnvelopeError, endpoint_category, endpoint_of
from ..protocol.body import INSPECTABLE_ENCODINGS, SCAN_LOCK, SCAN_WAIT_S, without_items
from ..protocol.rate_limits import RateLimits, limited
from ..delivery.request import Request
from ..util.stats import Stats

log = logging.getLogger(__name__)

REASON = "ratelimit_backoff"
DETAIL = "Sentry dropped data due to a quota or rate limit; the SDK should back off (relayed by the extension)"

Answer = Tuple[int, Dict[str, Any], Dict[str, str]]


class IngestLimiter:
    """The ingest ``before_queue`` hook for rate limits; it fails open (forwards unchanged) on any bug."""

    def __init__(self, limits: RateLimits, discards: Discards, stats: Stats,
                 decode_limit: int = DECODE_LIMIT) -> None:
        self.limits = limits
        self.discards = discards
        self.stats = stats
        self.decode_limit = decode_limit

    def __call__(self, req: Request) -> Optional[Answer]:
        """A 429 answer if everything in ``req`` is limited; else None, with limited items cut from ``req.body``."""
        if not self.limits.any_active(req.public_key):
            return None  # the fast path: nothing decoded, nothing parsed
        try:
            return self._apply(req)
        except Exception:
            log.exception("rate-limit check failed; forwarding unchanged (survived)")
            return None

    def accepted_headers(self, req: Request) -> Dict[str, str]:
        """Headers for a queued request's 200: the active limits, so the SDK stops sending what we would drop."""
        if not self.limits.any_active(req.public_key):
            return {}
        value = self.limits.header_value(req.public_key)
        return {"X-Sentry-Rate-Limits": value} if value else {}

    def _apply(self, req: Request) -> Optional[Answer]:
        key = req.public_key
        active = self.limits.active(key)
        now = self.limits.now()
        if limited(active, None, now):  # a limit on everything: no need to look inside
            self.discards.record_request(req, REASON)
            return self._refuse(req, None)
        endpoint = endpoint_of(req.upstream_path)
        if endpoint != "envelope":
            category = endpoint_category(endpoint)
            if category is not None and limited(active, category, now):
                self.discards.record_request(req, REASON)
                return self._refuse(req, [category])
            return None
        encoding = req.encoding
        if encoding not in INSPECTABLE_ENCODINGS:
            return None  # br/zstd: the stdlib cannot look inside, only envelope-wide limits apply
        # One scan at a time (memory); a request that cannot have it promptly goes on unchanged,
        # as one too large to look into does: upstream has the last word, and reports its drops.
        if not SCAN_LOCK.acquire(timeout=SCAN_WAIT_S):
            log.debug("not inspecting %s for rate limits: another envelope is being scanned", req.upstream_path)
            return None
        try:
            return self._filter(req, lambda category: limited(active, category, now))
        finally:
            SCAN_LOCK.release()

    def _filter(self, req: Request, is_limited: Callable[[str], bool]) -> Optional[Answer]:
        scan = scan_outcomes(req.body, req.encoding, self.decode_limit, is_limited)
        if not scan.complete:
            log.debug("not inspecting %s for rate limits: oversized or malformed", req.upstream_path)
            return None  # upstream has the last word
        dropped = sum(scan.picked)
        if not dropped:
            return None  # the body stays byte for byte what the SDK sent
        if dropped < len(scan.picked):
            try:
                body = without_items(req.body, req.encoding, [not p for p in scan.picked], scan.lengths,
                                     self.decode_limit)
            except EnvelopeError as exc:
                log.debug("not removing rate-limited items from %s: %s", req.upstream_path, exc)
                return None
        for category, quantity in scan.pairs:
            self.discards.record(req.public_key, REASON, category, quantity)
        if dropped == len(scan.picked):
            return self._refuse(req, scan.categories)
        req.body = body
        self.stats.incr("items_ratelimited", dropped)
        log.debug("removed %d rate-limited item(s) from %s", dropped, req.upstream_path)
        return None

    def _refuse(self, req: Request, categories: Optional[Iterable[str]]) -> Answer:
        # Mirror Sentry: 429 with the active limits, which the SDKs honour per category.
        key = req.public_key
        self.stats.drop(REASON)
        self.stats.reject(429)
        headers = {"Retry-After": str(self.limits.retry_after(key, categories)),
                   "X-Sentry-Rate-Limits": self.limits.header_value(key)}
        log.debug("refused %s: rate limited (%s)", req.upstream_path, headers["X-Sentry-Rate-Limits"])
        return 429, {"detail": DETAIL}, headers
