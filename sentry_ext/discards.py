"""What the extension itself discarded, counted per key, reason and category, and drained as
client_report payloads (``client_reports`` queues them upstream)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .request import Request
from .envelope import Envelope, EnvelopeError, Item, decode_body, endpoint_category, endpoint_of

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 4096  # Relay's limit for one client_report item
DECODE_LIMIT = 16 * 1024 * 1024  # bytes we decompress to count a dropped envelope's items

# Internal drop reason -> client-report reason; None: not ours to report.
REASONS: Dict[str, Optional[str]] = {
    "queue_overflow": "queue_overflow",
    "network_error": "network_error",
    "send_error": "send_error",
    # The spool only holds what the network could not deliver before the sandbox ended; ageing
    # out of it is how that network failure ends, and Sentry has no "expired" reason.
    "spool_expired": "network_error",
    "ratelimit_backoff": "ratelimit_backoff",
    # A bug in the extension kept delivering it (forwarder._recover gave it up).
    "internal_sdk_error": "internal_sdk_error",
    # Upstream answered 429 and counted the drop as a rate-limited outcome itself.
    "ratelimited_upstream": None,
}

# Batched items whose loss is also counted in payload bytes, under this category.
BYTE_CATEGORIES = {"log_item": "log_byte", "trace_metric": "trace_metric_byte"}

# Our own client reports are "internal": a dropped report is never reported (no feedback loop).
UNREPORTED_CATEGORIES = frozenset({"internal"})


def item_outcomes(item: Item) -> List[Tuple[str, int]]:
    """(category, quantity) pairs a lost item counts as, by sentry-python's rules."""
    category = item.data_category
    if category in UNREPORTED_CATEGORIES:
        return []
    if category == "transaction":
        try:
            spans = json.loads(item.payload).get("spans")
        except (ValueError, UnicodeDecodeError, AttributeError):
            spans = None
        # A lost transaction also loses its spans, plus one for the transaction's own root span.
        return [("transaction", 1), ("span", (len(spans) if isinstance(spans, list) else 0) + 1)]
    if category in ("span", "log_item", "trace_metric"):
        count = item.headers.get("item_count")
        quantity = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1
        pairs = [(category, quantity)]
        if category in BYTE_CATEGORIES:
            pairs.append((BYTE_CATEGORIES[category], len(item.payload)))
        return pairs
    if category == "attachment":
        return [("attachment", len(item.payload) or 1)]  # attachments are counted in bytes
    return [(category, 1)]


def request_outcomes(req: Request, limit: int = DECODE_LIMIT) -> List[Tuple[str, int]]:
    """(category, quantity) pairs a dropped request counts as; ``default`` if its body cannot be read."""
    endpoint = endpoint_of(req.upstream_path)
    if endpoint != "envelope":
        return [(endpoint_category(endpoint) or "error", 1)]
    try:
        envelope = Envelope.parse(decode_body(req.body, req.encoding, limit))
    except EnvelopeError:
        return [("default", 1)]
    pairs: List[Tuple[str, int]] = []
    for item in envelope.items:
        pairs.extend(item_outcomes(item))
    return pairs


class Discards:
    """Thread-safe counters of discarded data, drained as client_report payloads under 4 KiB."""

    def __init__(self, clock: Callable[[], float] = time.time, max_bytes: int = MAX_REPORT_BYTES) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._counts: Dict[str, Dict[Tuple[str, str], int]] = {}
        self.has_pending = False  # read without the lock on hot paths; a stale read is harmless

    def record(self, key: str, reason: str, category: str, quantity: int = 1) -> None:
        """Count ``quantity`` of ``category`` discarded for ``reason`` (a client-report reason)."""
        if quantity <= 0 or category in UNREPORTED_CATEGORIES:
            return
        with self._lock:
            counts = self._counts.setdefault(key, {})
            counts[(reason, category)] = counts.get((reason, category), 0) + quantity
            self.has_pending = True

    def record_request(self, req: Request, drop_reason: str) -> None:
        """Count everything in a dropped request under the client-report reason for ``drop_reason``."""
        reason = REASONS.get(drop_reason)
        if reason is None:
            return
        try:
            pairs = request_outcomes(req)
        except Exception:  # accounting must never break delivery
            log.exception("could not count a dropped request (survived)")
            pairs = [("default", 1)]
        for category, quantity in pairs:
            self.record(req.public_key, reason, category, quantity)

    def pending_keys(self) -> List[str]:
        """Keys with counts not yet taken."""
        with self._lock:
            return [k for k, v in self._counts.items() if v]

    def snapshot(self, key: str) -> Dict[Tuple[str, str], int]:
        """``{(reason, category): quantity}`` pending for ``key``."""
        with self._lock:
            return dict(self._counts.get(key, {}))

    def take_report(self, key: str) -> Optional[bytes]:
        """One client_report payload (at most ``max_bytes``) with pending counts of ``key``, which it
        removes; None if nothing is pending. Call again while it returns something."""
        with self._lock:
            counts = self._counts.get(key)
            if not counts:
                return None
            head = '{"timestamp":%.3f,"discarded_events":[' % self._clock()
            size = len(head) + 2  # "]}"
            entries: List[str] = []
            for (reason, category), quantity in list(counts.items()):
                entry = json.dumps({"reason": reason, "category": category, "quantity": quantity},
                                   separators=(",", ":"))
                if entries and size + len(entry) + 1 > self._max_bytes:
                    break  # the rest goes into the next payload
                entries.append(entry)
                size += len(entry) + (1 if len(entries) > 1 else 0)
                del counts[(reason, category)]
            if not counts:
                del self._counts[key]
            self.has_pending = bool(self._counts)
        return (head + ",".join(entries) + "]}").encode("utf-8")

    def restore(self, key: str, payload: bytes) -> None:
        """Put back the counts of a payload from ``take_report`` that could not be sent."""
        try:
            events = json.loads(payload)["discarded_events"]
            for event in events:
                self.record(key, str(event["reason"]), str(event["category"]), int(event["quantity"]))
        except (ValueError, KeyError, TypeError):
            log.warning("could not restore a client report; its counts are lost")
