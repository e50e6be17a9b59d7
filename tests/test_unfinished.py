"""Records in, transactions out: sentry_ext.insight.unfinished decides which invocations the SDK
never finished, sentry_ext.insight.transactions makes their transactions (checked with Relay's
own normalizer), and the pipeline sends them through its rate limits and client reports."""

from __future__ import annotations

import calendar
import gzip
import json
import time
import zlib
from typing import Any, Dict, List, Optional

import pytest
from sentry_relay.processing import StoreNormalizer

from helpers import KEY, StartPipeline, wait_until
from sentry_ext.awslambda.telemetry_records import parse_batch
from sentry_ext.config import load
from sentry_ext.delivery.request import Request
from sentry_ext.insight.transactions import build_request, build_transaction, trace_id_for
from sentry_ext.insight.unfinished import Unfinished, UnfinishedTracker, holds_transaction
from sentry_ext.protocol.body import decode_body
from sentry_ext.protocol.envelope import Envelope
from tools.fake_upstream import FakeUpstream

RID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
RID2 = "9576a536-e9f4-11e8-9739-2dfe598c3fce"
TRACE = "771a43a4192642f0b136d5159a501700"
XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
DSN = "https://%s@o1.ingest.sentry.io/42" % KEY
START = "2026-11-28T06:32:50.000Z"


def rec(rtype: str, **record: Any) -> Dict[str, Any]:
    return {"time": START, "type": rtype, "record": record}


def start(rid: str = RID) -> Dict[str, Any]:
    return rec("platform.start", requestId=rid, tracing={"type": "X-Amzn-Trace-Id", "value": XRAY})


def done(rid: str = RID, status: str = "success", error_type: Optional[str] = None, ms: float = 1000.0) -> Dict[str, Any]:
    extra = {"errorType": error_type} if error_type else {}
    return rec("platform.runtimeDone", requestId=rid, status=status, metrics={"durationMs": ms}, **extra)


def report(rid: str = RID, status: str = "success", error_type: Optional[str] = None, used: int = 60) -> Dict[str, Any]:
    extra = {"errorType": error_type} if error_type else {}
    return rec("platform.report", requestId=rid, status=status, **extra,
               metrics={"durationMs": 1001.0, "billedDurationMs": 1001, "memorySizeMB": 128, "maxMemoryUsedMB": used})


def sdk_envelope(item_type: str = "event", encoding: str = "", trace: Optional[Dict[str, str]] = None) -> Request:
    header = {"event_id": "a" * 32, "sent_at": "2026-11-28T06:32:51Z", "trace": trace or {"trace_id": TRACE}}
    payload = json.dumps({"extra": {"lambda": {"aws_request_id": RID}}}).encode()
    body = b"%s\n%s\n%s\n" % (json.dumps(header, separators=(",", ":")).encode(),
                              json.dumps({"type": item_type, "length": len(payload)}, separators=(",", ":")).encode(),
                              payload)
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "br":
        body = b"\x0b\x00\x80" + body  # not decodable by the stdlib: looks like brotli
    headers = {"content-encoding": encoding} if encoding else {}
    return Request("/api/42/envelope/", headers, body, KEY)


class Recorder:
    def __init__(self) -> None:
        self.found: List[Unfinished] = []
        self.tracker = UnfinishedTracker(self.found.append)

    def feed(self, *items: Dict[str, Any]) -> None:
        self.tracker.feed(parse_batch(list(items)))

    def note(self, req: Request, trace: Optional[Dict[str, str]] = None) -> None:
        header = json.loads(decode_body(req.body, req.encoding, 1 << 20).split(b"\n", 1)[0]) \
            if req.encoding != "br" else {"trace": trace or {"trace_id": TRACE}}
        self.tracker.note_envelope(req, header, lambda: RID)


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_holds_transaction_reads_item_headers_of_plain_and_compressed_bodies(encoding: str) -> None:
    assert holds_transaction(sdk_envelope("transaction", encoding)) is True
    assert holds_transaction(sdk_envelope("event", encoding)) is False
    assert holds_transaction(sdk_envelope("transaction", "br")) is None


@pytest.mark.parametrize("status,error_type,used,kind,deadline_hit", [
    ("timeout", "Sandbox.Timedout", 60, "timeout", True),
    ("error", "Runtime.OutOfMemory", 128, "oom", False),
    ("error", "Runtime.ExitError", 60, "exit", False),
    ("failure", "Extension.Crash", 60, "failure", False),
])
def test_each_failure_kind_is_one_unfinished_invocation(status: str, error_type: str, used: int, kind: str,
                                                        deadline_hit: bool) -> None:
    r = Recorder()
    r.tracker.invoked({"requestId": RID, "deadlineMs": 1_900_000_000_000})
    r.feed(start(), done(status=status, error_type=error_type))
    assert r.found == []  # the report is the final word
    r.feed(report(status=status, error_type=error_type, used=used))
    r.tracker.settle_all("failure")  # decided once
    (item,) = r.found
    assert (item.kind, item.status, item.error_type, item.deadline_hit) == (kind, status, error_type, deadline_hit)
    assert item.start == calendar.timegm(time.strptime(START[:19], "%Y-%m-%dT%H:%M:%S"))  # platform.start
    assert item.end - item.start == pytest.approx(1.0) and item.cold_start and item.xray == XRAY


def test_a_handled_raise_or_success_is_not_unfinished_nor_is_a_request_whose_sdk_sent_its_transaction() -> None:
    r = Recorder()
    r.feed(start(), done(status="error", error_type="RuntimeError"), report(status="error", error_type="RuntimeError"))
    r.feed(start(RID2), done(RID2), report(RID2))
    assert r.found == []
    # a crash after the SDK sent the transaction (e.g. the runtime exited after the flush): no double
    r = Recorder()
    r.tracker.invoked({"requestId": RID})
    r.note(sdk_envelope("event", "gzip"))
    r.note(sdk_envelope("transaction", "gzip"))
    r.feed(start(), done(status="error", error_type="Runtime.ExitError"), report(status="error",
                                                                                error_type="Runtime.ExitError"))
    assert r.found == []


def test_an_unreadable_sdk_envelope_counts_as_a_transaction_and_unsampled_traces_get_none() -> None:
    r = Recorder()
    r.tracker.invoked({"requestId": RID})
    r.note(sdk_envelope("event", "br"))
    r.feed(start(), done(status="timeout"), report(status="timeout"))
    assert r.found == []
    r = Recorder()
    r.tracker.invoked({"requestId": RID})
    r.note(sdk_envelope("event", trace={"trace_id": TRACE, "sampled": "false"}))
    r.feed(start(), done(status="timeout"), report(status="timeout"))
    assert r.found == []


def test_settle_decides_before_the_report_and_a_reset_cuts_short_what_is_still_open() -> None:
    r = Recorder()
    r.tracker.invoked({"requestId": RID})
    r.feed(start(), done(status="error", error_type="Runtime.ExitError"))
    r.tracker.settle(RID)
    assert [i.kind for i in r.found] == ["exit"]
    r.feed(report(status="error", error_type="Runtime.ExitError"))
    assert len(r.found) == 1
    # a spindown says nothing about a request still open (its records may be on their way)
    r = Recorder()
    deadline_ms = int((time.time() + 0.5) * 1000)
    r.tracker.invoked({"requestId": RID, "deadlineMs": deadline_ms})
    r.feed(start())
    r.tracker.settle_all("spindown")
    assert r.found == []
    r.tracker.settle_all("timeout")
    (item,) = r.found
    assert item.kind == "shutdown" and item.deadline_hit and item.end <= deadline_ms / 1000.0


def test_an_envelope_before_its_invoke_is_attributed_by_the_request_id_it_names() -> None:
    r = Recorder()
    r.tracker.invoked({"requestId": RID2})
    r.feed(start(RID2), done(RID2))  # the previous request ended; the next INVOKE is not read yet
    r.note(sdk_envelope("transaction"))  # names RID
    r.tracker.invoked({"requestId": RID})
    r.feed(start(), done(status="error", error_type="Runtime.ExitError"), report(status="error",
                                                                                error_type="Runtime.ExitError"))
    assert r.found == []


def unfinished(kind: str = "timeout", deadline_hit: bool = True) -> Unfinished:
    now = time.time()
    return Unfinished(RID, kind, "timeout" if kind == "timeout" else "error", "Sandbox.Timedout", now - 3.0, now,
                      True, deadline_hit, XRAY, {"trace_id": TRACE, "sample_rate": "0.5"}, None)


CFG_ENV = {"SENTRY_DSN": DSN, "AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
           "AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}


@pytest.mark.parametrize("kind,deadline_hit,status", [("timeout", True, "deadline_exceeded"),
                                                      ("oom", False, "internal_error"),
                                                      ("shutdown", False, "internal_error")])
def test_the_transaction_passes_relays_normalizer(kind: str, deadline_hit: bool, status: str) -> None:
    cfg = load(CFG_ENV)
    event = build_transaction(unfinished(kind, deadline_hit), {"trace_id": TRACE, "release": "r@1"}, cfg)
    normalized = StoreNormalizer().normalize_event(event)
    assert not normalized.get("errors"), normalized.get("errors")
    assert normalized["type"] == "transaction" and normalized["transaction"] == "fn"
    trace = normalized["contexts"]["trace"]
    assert (trace["trace_id"], trace["op"], trace["status"]) == (TRACE, "function.aws", status)
    assert normalized["timestamp"] - normalized["start_timestamp"] == pytest.approx(3.0)
    assert normalized["sdk"]["name"] == "sentry.lambda.extension" and normalized["release"] == "r@1"
    assert dict(normalized["tags"])["aws_lambda.request_id"] == RID
    assert normalized["extra"]["lambda"]["aws_request_id"] == RID


def test_the_envelope_carries_the_sdks_sampling_context_and_trace_ids_fall_back_to_xray() -> None:
    cfg = load(CFG_ENV)
    envelope = Envelope.parse(build_request(unfinished(), {"trace_id": TRACE}, cfg).body)
    assert envelope.headers["trace"] == {"trace_id": TRACE, "public_key": KEY, "transaction": "fn",
                                         "sampled": "true", "sample_rate": "0.5"}
    (item,) = envelope.items
    assert item.type == "transaction" and json.loads(item.payload)["event_id"] == envelope.headers["event_id"]
    assert trace_id_for({}, XRAY) == "5759e988bd862e3fe1be46a994272793"
    assert len(trace_id_for({}, None)) == 32


def test_a_rate_limited_transaction_is_dropped_and_reported_as_transaction_and_span(
        pipelines: StartPipeline, upstream: FakeUpstream) -> None:
    pipe = pipelines()
    pipe.limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:transaction:project"})
    pipe.invoked({"requestId": RID, "deadlineMs": int(time.time() * 1000) + 3000})
    pipe.on_telemetry([start(), done(status="timeout", error_type="Sandbox.Timedout"),
                       report(status="timeout", error_type="Sandbox.Timedout")])
    assert pipe.stats.get("unfinished_transactions") == 1
    counts = pipe.discards.snapshot(KEY)
    assert counts[("ratelimit_backoff", "transaction")] == 1 and counts[("ratelimit_backoff", "span")] == 1
    assert pipe.flush(5.0)
    assert wait_until(lambda: upstream.items("client_report"), 5)
    assert upstream.items("transaction") == [] and len(upstream.items("event")) == 1  # the failure event
