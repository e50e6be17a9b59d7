"""Client reports: discard counting (sentry_ext/protocol/discards.py) and the report envelopes (client_reports.py)."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Dict, List, Tuple

import pytest

from helpers import KEY, FakeClock
from sentry_ext.delivery.queue import BoundedQueue
from sentry_ext.protocol.client_reports import ReportScheduler, report_request
from sentry_ext.protocol.discards import MAX_REPORT_BYTES, Discards, request_outcomes
from sentry_ext.protocol.dsn import Dsn
from sentry_ext.protocol.envelope import Envelope
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
