"""What the extension itself discarded, counted per key, reason and category, and drained as
client_report payloads (``client_reports`` queues them upstream)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..delivery.request import Request
from .envelope import EnvelopeError, Item, endpoint_category, endpoint_of
from .body import SCAN_LIMIT, SCAN_LOCK, SCAN_WAIT_S, ScanLimit, scan_items
from .envelope import category as item_category

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 4096  # Relay's limit for one client_report item
DECODE_LIMIT = SCAN_LIMIT  # decoded bytes scanned to count a dropped envelope's items (see body.py)
# Without the scan lock, only this much is decoded (in small chunks) to learn the first item's type.
FALLBACK_LIMIT = 16 * 1024
FALLBACK_CHUNK = 4 * 1024
# A transaction's spans: its payload is parsed as JSON up to this size (a hostile 16 KiB of JSON
# makes well under 1 MiB of objects); past it, its "span_id" keys are counted as it streams by
# (sentry-python writes one per span and one for the root span in contexts.trace).
SPAN_JSON_LIMIT = 16 * 1024
_SPAN_ID = b'"span_id"'

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


class SpanCounter:
    """Counts a transaction's spans (its own root span included) from its payload, fed in pieces."""

    __slots__ = ("_head", "_size", "_ids", "_tail")

    def __init__(self) -> None:
        self._head: List[bytes] = []
        self._size = 0
        self._ids = 0
        self._tail = b""

    def __call__(self, data: bytes) -> None:
        self._size += len(data)
        if self._size <= SPAN_JSON_LIMIT:
            self._head.append(data)
        else:
            self._head.clear()
        joined = self._tail + data
        self._ids += joined.count(_SPAN_ID)
        self._tail = joined[1 - len(_SPAN_ID):]  # too short to hold a whole match: none counted twice

    def spans(self) -> int:
        if self._size > SPAN_JSON_LIMIT:
            return max(self._ids, 1)
        try:
            spans = json.loads(b"".join(self._head)).get("spans")
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            spans = None
        return (len(spans) if isinstance(spans, list) else 0) + 1


def outcomes(category: str, headers: Dict[str, object], length: int,
             spans: Optional[int] = None) -> List[Tuple[str, int]]:
    """(category, quantity) pairs a lost item counts as, by sentry-python's rules; ``spans``: those
    of a transaction, its root span included."""
    if category in UNREPORTED_CATEGORIES:
        return []
    if category == "transaction":
        # A lost transaction also loses its spans, plus one for the transaction's own root span.
        return [("transaction", 1), ("span", spans or 1)]
    if category in ("span", "log_item", "trace_metric"):
        count = headers.get("item_count")
        quantity = count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1
        pairs = [(category, quantity)]
        if category in BYTE_CATEGORIES:
            pairs.append((BYTE_CATEGORIES[category], length))
        return pairs
    if category == "attachment":
        return [("attachment", length or 1)]  # attachments are counted in bytes
    return [(category, 1)]


def item_outcomes(item: Item) -> List[Tuple[str, int]]:
    """(category, quantity) pairs a lost item counts as, by sentry-python's rules."""
    counter = SpanCounter()
    if item.data_category == "transaction":
        counter(item.payload)
    return outcomes(item.data_category, item.headers, len(item.payload), counter.spans())


def one_item(category: str) -> List[Tuple[str, int]]:
    """What one item of ``category`` counts as when nothing more is known of it; never nothing."""
    return outcomes(category, {}, 0) or [("default", 1)]


class Scan:
    """What ``scan_outcomes`` found: outcomes of the items picked, which were, their lengths."""

    __slots__ = ("pairs", "picked", "categories", "lengths", "complete")

    def __init__(self) -> None:
        self.pairs: List[Tuple[str, int]] = []
        self.categories: Set[str] = set()  # of the items picked
        self.picked: List[bool] = []
        self.lengths: List[int] = []
        self.complete = False  # every item seen, and the envelope well-formed


def scan_outcomes(body: bytes, encoding: str, limit: int = DECODE_LIMIT,
                  pick: Optional[Callable[[str], bool]] = None) -> Scan:
    """Streams an envelope, counting the items whose category ``pick`` accepts (all by default).

    Past ``limit`` (or MAX_SCAN_ITEMS) what was seen is counted, and the rest as one item of the
    first item's category; an envelope that breaks the format counts what was seen, or else one
    ``default``. Memory: one decoded chunk, one item header, a transaction's first 16 KiB."""
    scan = Scan()
    counter: Optional[SpanCounter] = None
    first: List[str] = []

    def on_item(headers: Dict[str, object], _line: bytes) -> Optional[SpanCounter]:
        nonlocal counter
        kind = item_category(str(headers["type"]))
        if not first:
            first.append(kind)
        counter = SpanCounter() if kind == "transaction" and (pick is None or pick(kind)) else None
        return counter

    try:
        for item in scan_items(body, encoding, limit, on_item):
            kind = item.data_category
            picked = pick is None or pick(kind)
            scan.picked.append(picked)
            scan.lengths.append(item.length)
            if picked:
                scan.categories.add(kind)
                spans = counter.spans() if counter is not None else None
                scan.pairs.extend(outcomes(kind, item.headers, item.length, spans))
        scan.complete = True
    except ScanLimit as exc:
        log.debug("counted the first %d items of an envelope, the rest as one: %s", len(scan.picked), exc)
        if pick is None or pick(first[0] if first else "default"):
            scan.pairs.extend(one_item(first[0] if first else "default"))
    except EnvelopeError:
        if not scan.pairs and pick is None:
            scan.pairs = [("default", 1)]
    return scan


def first_category(body: bytes, encoding: str) -> str:
    """The first item's category, decoding at most FALLBACK_LIMIT bytes in small chunks; ``default``
    if it cannot be read there."""
    first: List[str] = []

    def on_item(headers: Dict[str, object], _line: bytes) -> None:
        if not first:
            first.append(item_category(str(headers["type"])))

    try:
        for _ in scan_items(body, encoding, FALLBACK_LIMIT, on_item, chunk=FALLBACK_CHUNK):
            break
    except EnvelopeError:
        pass
    return first[0] if first else "default"


def request_outcomes(req: Request, limit: int = DECODE_LIMIT) -> List[Tuple[str, int]]:
    """(category, quantity) pairs a dropped request counts as; ``default`` if its body cannot be read.

    One scan at a time (SCAN_LOCK); a request that cannot have it promptly counts as one item of
    its first item's category."""
    endpoint = endpoint_of(req.upstream_path)
    if endpoint != "envelope":
        return [(endpoint_category(endpoint) or "error", 1)]
    if not SCAN_LOCK.acquire(timeout=SCAN_WAIT_S):
        log.debug("another envelope is being scanned; counting %s as one item", req.upstream_path)
        return one_item(first_category(req.body, req.encoding))
    try:
        return scan_outcomes(req.body, req.encoding, limit).pairs
    finally:
        SCAN_LOCK.release()


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
