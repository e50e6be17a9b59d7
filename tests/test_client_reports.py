"""Client reports: discard counting (sentry_ext/protocol/discards.py) and the report envelopes (client_reports.py)."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from typing import Dict, List, Tuple

import pytest

from helpers import KEY, FakeClock
from sentry_ext.delivery.queue import BoundedQueue
from sentry_ext.protocol.client_reports import ReportScheduler, report_request
from sentry_ext.protocol.discards import MAX_REPORT_BYTES, Discards, request_outcomes
from sentry_ext.protocol.dsn import Dsn
from sentry_ext.protocol.envelope import Envelope
from sentry_ext.protocol.body import SCAN_LOCK
from sentry_ext.ingest.limits import IngestLimiter
from sentry_ext.protocol.rate_limits import RateLimits
from sentry_ext.delivery.request import Request
from sentry_ext.util.stats import Stats


def build(*items: Tuple[dict, bytes], header: bytes = b'{"event_id":"aa"}') -> bytes:
    out = [header, b"\n"]
    for item_header, payload in items:
        out += [json.dumps(item_header).encode(), b"\n", payload, b"\n"]
    return b"".join(out)


def req(body: bytes, encoding: str = "", path: str = "/api/42/envelope/") -> Request:
    headers = {"content-encoding": encoding} if encoding else {}
    return Request(upstream_path=path, headers=headers, body=body, public_key=KEY)


TRANSACTION = json.dumps({"type": "transaction", "spans": [{}, {}, {}]}).encode()
MIXED = build(({"type": "event"}, b'{"message":"x"}'),
              ({"type": "transaction"}, TRANSACTION),
              ({"type": "attachment", "length": 5}, b"12345"),
              ({"type": "log", "item_count": 7}, b'{"items":[]}'),
              ({"type": "span", "item_count": 4}, b"{}"),
              ({"type": "trace_metric", "item_count": 3}, b'{"items":[1]}'),
              ({"type": "client_report"}, b'{"discarded_events":[]}'),
              ({"type": "brand_new_type"}, b"{}"))
MIXED_COUNTS = [("error", 1), ("transaction", 1), ("span", 4), ("attachment", 5), ("log_item", 7),
                ("log_byte", 12), ("span", 4), ("trace_metric", 3), ("trace_metric_byte", 13),
                ("default", 1)]  # client_report: internal, not counted


@pytest.mark.parametrize("encoding,encode", [
    ("", lambda b: b),
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: (lambda c: c.compress(b) + c.flush())(zlib.compressobj(6, zlib.DEFLATED, -15))),
])
def test_request_outcomes_count_items_like_sentry_python(encoding: str, encode) -> None:
    assert request_outcomes(req(encode(MIXED), encoding)) == MIXED_COUNTS


def test_request_outcomes_for_other_endpoints_and_unreadable_bodies() -> None:
    assert request_outcomes(req(b'{"message":"x"}', path="/api/42/store/")) == [("error", 1)]
    assert request_outcomes(req(b"{}", path="/api/store/")) == [("error", 1)]
    assert request_outcomes(req(b"{}", path="/api/42/security/?sentry_key=x")) == [("security", 1)]
    assert request_outcomes(req(b"MDMP", path="/api/42/minidump/")) == [("error", 1)]
    assert request_outcomes(req(b"not an envelope\n{", "")) == [("default", 1)]
    assert request_outcomes(req(b"\x8b\x00brotli", "br")) == [("default", 1)]
    assert request_outcomes(req(gzip.compress(MIXED)[:20], "gzip")) == [("default", 1)]  # truncated
    assert request_outcomes(req(gzip.compress(MIXED), "gzip"), limit=50) == [("default", 1)]  # bound
    # a transaction whose payload is not JSON still counts its own span
    assert request_outcomes(req(build(({"type": "transaction"}, b"garbage")))) == [("transaction", 1), ("span", 1)]


def _entries(payload: bytes) -> Dict[Tuple[str, str], int]:
    data = json.loads(payload)
    assert isinstance(data["timestamp"], float)
    return {(e["reason"], e["category"]): e["quantity"] for e in data["discarded_events"]}


def test_record_and_take_report() -> None:
    out = Discards(clock=lambda: 1700000000.5)
    assert out.take_report(KEY) is None and not out.has_pending
    out.record(KEY, "queue_overflow", "error")
    out.record(KEY, "queue_overflow", "error", 2)
    out.record(KEY, "network_error", "span", 4)
    out.record(KEY, "network_error", "internal", 1)  # our own reports: never re-reported
    out.record(KEY, "network_error", "error", 0)     # nothing
    assert out.has_pending and out.pending_keys() == [KEY]
    payload = out.take_report(KEY)
    assert payload is not None and json.loads(payload)["timestamp"] == 1700000000.5
    assert _entries(payload) == {("queue_overflow", "error"): 3, ("network_error", "span"): 4}
    assert out.take_report(KEY) is None and not out.has_pending and out.pending_keys() == []


def test_record_request_maps_reasons() -> None:
    out = Discards()
    body = build(({"type": "transaction"}, TRANSACTION))
    out.record_request(req(body), "spool_expired")
    out.record_request(req(body), "ratelimited_upstream")  # upstream counted it: nothing
    out.record_request(req(body), "send_error")
    out.record_request(req(body), "no_such_reason")
    out.record_request(req(build(({"type": "client_report"}, b"{}"))), "network_error")  # internal
    assert out.snapshot(KEY) == {("network_error", "transaction"): 1, ("network_error", "span"): 4,
                                 ("send_error", "transaction"): 1, ("send_error", "span"): 4}


def test_reports_are_split_under_4_kib() -> None:
    out = Discards()
    expected: Dict[Tuple[str, str], int] = {}
    for i in range(300):
        reason = ("queue_overflow", "network_error", "send_error")[i % 3]
        out.record(KEY, reason, "category_%03d" % i, i + 1)
        expected[(reason, "category_%03d" % i)] = i + 1
    payloads: List[bytes] = []
    for _ in range(len(expected) + 1):  # at most one report per entry, then None
        payload = out.take_report(KEY)
        if payload is None:
            break
        payloads.append(payload)
    else:
        pytest.fail("take_report never ran dry")
    assert len(payloads) > 1
    assert all(len(p) <= MAX_REPORT_BYTES for p in payloads)
    merged: Dict[Tuple[str, str], int] = {}
    for p in payloads:
        merged.update(_entries(p))
    assert merged == expected


def test_restore_puts_counts_back() -> None:
    out = Discards()
    out.record(KEY, "queue_overflow", "error", 2)
    payload = out.take_report(KEY)
    assert payload is not None and not out.has_pending
    out.restore(KEY, payload)
    assert out.snapshot(KEY) == {("queue_overflow", "error"): 2}


def test_report_request_is_a_valid_authenticated_envelope() -> None:
    dsn = Dsn.parse("https://%s@o1.ingest.sentry.io/42" % KEY)
    payload = b'{"timestamp":1.0,"discarded_events":[]}'
    r = report_request(dsn, KEY, payload)
    assert r.upstream_path == "/api/42/envelope/"
    assert r.headers["x-sentry-auth"].startswith("Sentry sentry_key=%s, sentry_version=7, " % KEY)
    assert "sentry_client=sentry-lambda-extension/" in r.headers["x-sentry-auth"]
    env = Envelope.parse(r.body)
    assert [(i.type, i.payload) for i in env.items] == [("client_report", payload)]
    assert request_outcomes(r) == []  # a dropped report is never reported


def test_scheduler_batches_periodic_reports_and_keeps_counts_when_the_queue_is_full() -> None:
    dsn = Dsn.parse("https://%s@o1.ingest.sentry.io/42" % KEY)
    out = Discards()
    queue = BoundedQueue(1, 1 << 20)
    clock = FakeClock(100.0)
    stats = Stats()
    sched = ReportScheduler(out, queue, dsn, stats, interval_s=30, clock=clock)
    for _ in range(5):
        out.record(KEY, "queue_overflow", "error")
        sched.maybe_send()
    assert len(queue) == 0  # not one envelope per drop: the interval has not passed
    clock.now += 30
    sched.maybe_send()
    assert len(queue) == 1 and not out.has_pending and stats.get("client_reports") == 1
    out.record(KEY, "queue_overflow", "error", 3)
    clock.now += 30
    sched.maybe_send()  # the queue (cap 1) is full: counts stay pending
    assert len(queue) == 1 and out.snapshot(KEY) == {("queue_overflow", "error"): 3}
    assert not sched.send()
    first = queue.take_all()[0]
    assert _entries(Envelope.parse(first.body).items[0].payload) == {("queue_overflow", "error"): 5}


# -- bounded decoding (issue 20, finding 4) ---------------------------------------------------

MIB = 1024 * 1024


def bomb(payload_bytes: int, item: bytes = b'{"type":"attachment","length":%d}') -> bytes:
    """A small gzip body that decodes to an envelope with one item of ``payload_bytes`` zeros."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(b'{"event_id":"%s"}\n' % (b"b" * 32) + item % payload_bytes + b"\n")]
    block = b"\0" * MIB
    for _ in range(payload_bytes // MIB):
        parts.append(comp.compress(block))
    parts.append(comp.compress(b"\0" * (payload_bytes % MIB) + b"\n"))
    parts.append(comp.flush())
    return b"".join(parts)


def peak_of(fn) -> Tuple[object, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("size,counts", [
    (15 * MIB, [("attachment", 15 * MIB)]),  # scanned to the end: counted exactly
    (16 * MIB, [("attachment", 1)]),         # past the scan cap: the rest counts as one item, never as none
])
def test_counting_a_gzip_bomb_holds_no_decoded_body(size: int, counts: List[Tuple[str, int]]) -> None:
    body = bomb(size)
    assert len(body) < 20_000
    outcomes, peak = peak_of(lambda: request_outcomes(req(body, "gzip")))
    assert outcomes == counts
    assert peak < 2 * MIB, peak


def test_a_gzip_bomb_transaction_counts_its_spans_by_streaming() -> None:
    payload = b'{"type":"transaction","contexts":{"trace":{"span_id":"a"}},"spans":[%s]}' % b",".join(
        [b'{"span_id":"%016x","description":"%s"}' % (i, b"x" * 2000) for i in range(3000)])
    body = gzip.compress(build(({"type": "transaction", "length": len(payload)}, payload)))
    outcomes, peak = peak_of(lambda: request_outcomes(req(body, "gzip")))
    assert outcomes == [("transaction", 1), ("span", 3001)]
    assert peak < 2 * MIB, peak


def test_inspecting_a_gzip_bomb_under_a_rate_limit_holds_no_decoded_body() -> None:
    limits = RateLimits()
    assert limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:transaction:key"})
    limiter = IngestLimiter(limits, Discards(), Stats())
    body = bomb(15 * MIB)
    r = req(body, "gzip")
    answer, peak = peak_of(lambda: limiter(r))
    assert answer is None and r.body is body  # nothing limited: forwarded as it came
    assert peak < 2 * MIB, peak
    assert limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:attachment:key"})
    answer, peak = peak_of(lambda: limiter(r))
    assert answer is not None and answer[0] == 429
    assert limiter.discards.snapshot(KEY) == {("ratelimit_backoff", "attachment"): 15 * MIB}
    assert peak < 2 * MIB, peak


def test_a_scan_waits_briefly_for_another_then_counts_cheaply() -> None:
    limits = RateLimits()
    assert limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:error:key"})
    limiter = IngestLimiter(limits, Discards(), Stats())
    body = gzip.compress(MIXED)
    assert SCAN_LOCK.acquire(timeout=5)
    try:
        started = time.monotonic()
        # one item of the first item's category, never nothing
        assert request_outcomes(req(body, "gzip")) == [("error", 1)]
        assert request_outcomes(req(bomb(15 * MIB), "gzip")) == [("attachment", 1)]
        r = req(body, "gzip")
        assert limiter(r) is None and r.body is body  # not inspected: forwarded unchanged
        assert time.monotonic() - started < 2
    finally:
        SCAN_LOCK.release()
    assert request_outcomes(req(body, "gzip")) == MIXED_COUNTS
