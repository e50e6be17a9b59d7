"""Function logs plumbing: Telemetry records in, log envelopes out (sentry_ext.insight.log_router), the
breadcrumbs it gives failure events, and its place in the pipeline (rate limits, client reports)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
from typing import Any, Dict, List, Optional

import pytest

from helpers import KEY, attr
from sentry_ext.config import load
from sentry_ext.protocol.discards import Discards
from sentry_ext.protocol.envelope import Envelope
from sentry_ext.insight.failure_events import build_event
from sentry_ext.insight.invocations import Invocations
from sentry_ext.insight.failures import Failure
from sentry_ext.insight.log_batch import LogBatch
from sentry_ext.insight.log_router import DUPLICATES_HINT, LogRouter
from sentry_ext.pipeline import Pipeline
from sentry_ext.delivery.request import Request
from sentry_ext.util.stats import Stats
from sentry_ext.awslambda.telemetry_records import parse_batch
from tools.fake_upstream import log_item_problems

DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"
A, B = "8476a536-e9f4-11e8-9739-2dfe598c3fcd", "9576a536-e9f4-11e8-9739-2dfe598c3fce"
SDK_TRACE = "771a43a4192642f0b136d5159a501700"


def cfg(**env: str) -> Any:
    base = {"SENTRY_DSN": DSN, "SENTRY_EXT_LOGS": "on", "AWS_LAMBDA_FUNCTION_NAME": "orders",
            "AWS_LAMBDA_FUNCTION_VERSION": "7", "AWS_REGION": "eu-west-1"}
    base.update(env)
    return load(base)


def t(ms: int) -> str:
    return "2026-11-28T06:32:55.%03dZ" % ms


def fn(record: Any, ms: int = 0, rtype: str = "function") -> Dict[str, Any]:
    return {"time": t(ms), "type": rtype, "record": record}


def start(rid: str, ms: int = 0) -> Dict[str, Any]:
    return {"time": t(ms), "type": "platform.start", "record": {"requestId": rid}}


def done(rid: str, ms: int = 0, status: str = "success") -> Dict[str, Any]:
    return {"time": t(ms), "type": "platform.runtimeDone", "record": {"requestId": rid, "status": status}}


class Harness:
    def __init__(self, sdk: Optional[Dict[str, Dict[str, str]]] = None, batch: Optional[LogBatch] = None,
                 **env: str) -> None:
        self.sent: List[Request] = []
        self.discards = Discards()
        self.stats = Stats()
        self.sdk = sdk or {}
        self.router = LogRouter(cfg(**env), self.submit, self.discards, self.stats,
                                lambda rid: self.sdk.get(rid, {}), batch)

    def submit(self, req: Request) -> bool:
        self.sent.append(req)
        return True

    def feed(self, *items: Dict[str, Any]) -> Dict[int, Any]:
        return self.router.feed(parse_batch(list(items)))

    def items(self) -> List[Any]:
        return [item for req in self.sent for item in sent_envelope(req).items]

    def logs(self) -> List[Dict[str, Any]]:
        out = []
        for item in self.items():
            assert log_item_problems(item.headers, item.payload) == []
            out.extend(json.loads(item.payload)["items"])
        return out


def sent_envelope(req: Request) -> Envelope:
    """A log envelope the router made: gzip'd, and its header names that."""
    assert req.headers["content-encoding"] == "gzip" and req.headers["content-type"] == "application/x-sentry-envelope"
    return Envelope.parse(gzip.decompress(req.body))


def test_lines_are_attributed_by_id_or_time_and_sent_at_runtime_done() -> None:
    h = Harness(sdk={A: {"trace_id": SDK_TRACE, "release": "app@1", "environment": "prod"}})
    h.feed(fn("before any request\n", 1), start(A, 2), fn("print in A\n", 3),
           fn("[WARNING]\t%s\t%s\tpython warning\n" % (t(4), A), 4),
           fn("[ERROR]\t%s\t%s\tfailed\nTraceback (most recent call last):\n  boom\n" % (t(5), A), 5),
           fn("START RequestId: %s Version: $LATEST\n" % A, 5), fn({"message": "own output"}, 6, "extension"))
    assert h.sent == []  # held until the request's runtimeDone (its SDK trace is known by then)
    h.feed(done(A, 7))
    logs = h.logs()
    assert [(log["level"], log["body"]) for log in logs] == [
        ("info", "before any request"), ("info", "print in A"), ("warn", "python warning"),
        ("error", "failed\nTraceback (most recent call last):\n  boom")]
    assert [attr(log, "faas.invocation_id") for log in logs] == [None, A, A, A]
    assert {log["trace_id"] for log in logs[1:]} == {SDK_TRACE}
    assert logs[0]["trace_id"] != SDK_TRACE
    assert attr(logs[1], "sentry.release") == "app@1" and attr(logs[1], "sentry.environment") == "prod"
    assert attr(logs[1], "faas.name") == "orders" and attr(logs[1], "cloud.region") == "eu-west-1"
    assert attr(logs[1], "sentry.origin") == "auto.log.aws_lambda_extension"
    # a line after runtimeDone waits for the next flush (the next runtimeDone, or SHUTDOWN), unattributed
    h.feed(fn("after A\n", 8))
    assert h.router.flush() == 1
    assert h.logs()[-1]["body"] == "after A" and attr(h.logs()[-1], "faas.invocation_id") is None


def test_each_request_without_an_sdk_trace_gets_one_trace_id_for_all_its_lines() -> None:
    h = Harness()
    h.feed(start(A), *[fn("a%d\n" % i, i) for i in range(150)], done(A, 200))
    h.feed(start(B, 201), *[fn({"message": "b", "requestId": B, "level": "ERROR"}, 202)] * 3, done(B, 203))
    items = h.items()
    assert [item.headers["item_count"] for item in items] == [100, 50, 3]  # at most 100 per envelope
    logs = h.logs()
    a_ids = {log["trace_id"] for log in logs if attr(log, "faas.invocation_id") == A}
    b_ids = {log["trace_id"] for log in logs if attr(log, "faas.invocation_id") == B}
    assert len(a_ids) == len(b_ids) == 1 and a_ids != b_ids
    assert h.stats.snapshot()["logs_forwarded"] == h.stats.snapshot()["logs_received"] == 153



def test_lines_whose_envelope_submit_refuses_are_counted_dropped_not_forwarded() -> None:
    h = Harness()
    h.router.submit = lambda req: False  # rate limited or no room in the queue: the pipeline counts the drop
    h.feed(start(A), *[fn("a%d\n" % i, i) for i in range(3)], done(A, 5))
    stats = h.stats.snapshot()
    assert stats["logs_received"] == 3 and stats.get("logs_forwarded", 0) == 0 and stats["logs_dropped"] == 3

def test_overlapping_requests_attribute_only_lines_that_name_theirs() -> None:
    for lmi in (False, True):
        h = Harness()
        first = [{"time": t(0), "type": "platform.initStart",
                  "record": {"initializationType": "lambda-managed-instances", "phase": "init"}}] if lmi else []
        h.feed(*first, start(A, 1), *([] if lmi else [start(B, 2)]), fn("print: whose?\n", 3),
               fn({"message": "json", "requestId": A}, 4), {"time": t(5), "type": "platform.report",
                                                            "record": {"requestId": A, "status": "success"}})
        assert [(log["body"], attr(log, "faas.invocation_id")) for log in h.logs()] == [
            ("print: whose?", None), ("json", A)], lmi


def test_level_floor_and_overflow_counted_in_client_reports() -> None:
    h = Harness(batch=LogBatch(max_items=10), SENTRY_EXT_LOGS_LEVEL="warn")
    h.feed(start(A), *[fn("[INFO]\t%s\t%s\tinfo %d\n" % (t(i), A, i), i) for i in range(5)],
           *[fn("[WARNING]\t%s\t%s\twarn %d\n" % (t(i), A, i), i) for i in range(25)])
    # half the batch's bounds sends early: nothing past the bound was dropped
    assert len(h.logs()) == 25 and h.discards.snapshot(KEY) == {}
    small = Harness(batch=LogBatch(max_items=200, max_bytes=4096))
    small.router._early_bytes = 1 << 30  # as if sending early were not enough: the bound drops the oldest
    small.feed(start(A), *[fn("x" * 100 + "\n", 1)] * 20, done(A, 2))  # 20 lines of ~612 counted bytes: 6 fit
    dropped = small.discards.snapshot(KEY)
    forwarded = len(small.logs())
    assert forwarded + dropped[("queue_overflow", "log_item")] == 20 and dropped[("queue_overflow", "log_byte")] > 0
    assert small.stats.snapshot()["logs_dropped"] == dropped[("queue_overflow", "log_item")]


def test_breadcrumbs_of_a_failure_are_the_requests_last_parsed_lines() -> None:
    h = Harness()
    failures: List[Failure] = []
    inv = Invocations(failures.append)
    batch = parse_batch([start(A, 0), *[fn("line %d\n" % i, i) for i in range(30)],
                         fn("[ERROR]\t%s\t%s\tlast words\n" % (t(31), A), 31),
                         fn({"message": "other's", "requestId": B}, 32), done(A, 40, "timeout"),
                         {"time": t(41), "type": "platform.report",
                          "record": {"requestId": A, "status": "timeout", "errorType": "Sandbox.Timedout"}}])
    inv.feed(batch, h.router.feed(batch))
    (failure,) = failures
    assert len(failure.log_lines) == 20 and failure.log_lines[0][1:] == ("info", "line 11")
    assert failure.log_lines[-1][1:] == ("error", "last words")
    crumbs = build_event(failure, cfg())["breadcrumbs"]["values"]
    assert crumbs[-1]["level"] == "error" and crumbs[-1]["message"] == "last words"
    assert isinstance(crumbs[0]["timestamp"], float)


def test_a_decided_request_lets_its_lines_go() -> None:
    """Memory: a request is remembered long after its end (64 of them), its lines only until the
    failure decision they serve; a failure still gets them."""
    h = Harness()
    failures: List[Failure] = []
    inv = Invocations(failures.append)

    def report(rid: str, ms: int, status: str) -> Dict[str, Any]:
        error = {"errorType": "Sandbox.Timedout"} if status == "timeout" else {}
        return {"time": t(ms), "type": "platform.report", "record": dict(error, requestId=rid, status=status)}

    for rid, status in ((A, "success"), (B, "timeout")):
        batch = parse_batch([start(rid, 0), fn("[INFO]\t%s\t%s\tworking\n" % (t(1), rid), 1), done(rid, 2, status),
                             report(rid, 3, status)])
        inv.feed(batch, h.router.feed(batch))
    (failure,) = failures
    assert failure.request_id == B and [line[1:] for line in failure.log_lines] == [("info", "working")]
    assert [len(inv._requests[rid].logs) for rid in (A, B)] == [0, 0]  # noqa: SLF001 (what is held)
    assert inv._requests[A].logs is inv._requests[B].logs  # noqa: SLF001 (one shared empty deque)
    late = parse_batch([fn("[INFO]\t%s\t%s\tafter its end\n" % (t(4), A), 4)])
    inv.feed(late, h.router.feed(late))
    assert len(inv._requests[A].logs) == 0  # noqa: SLF001


def test_one_time_hint_when_the_sdk_sends_logs_too(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    payload = json.dumps({"items": [{"timestamp": 1.0, "trace_id": SDK_TRACE, "level": "info", "body": "x"}]}).encode()
    body = b'{"sent_at":"2026-11-28T06:32:55Z"}\n' + json.dumps({"type": "log", "item_count": 1,
                                                               "length": len(payload)}).encode() + b"\n" + payload
    gz = Request("/api/42/envelope/", {"content-encoding": "gzip"}, gzip.compress(body), KEY)
    event = Request("/api/42/envelope/", {}, b'{"event_id":"' + b"a" * 32 + b'"}\n{"type":"event"}\n{}\n', KEY)
    with caplog.at_level(logging.WARNING, logger="sentry_ext.insight.log_router"):
        h.router.note_sdk_envelope(event, {"event_id": "a" * 32})
        assert DUPLICATES_HINT not in caplog.text
        for _ in range(3):
            h.router.note_sdk_envelope(gz, {"sent_at": "x"})
    assert caplog.text.count(DUPLICATES_HINT) == 1


def _pipeline(**env: str) -> Pipeline:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return Pipeline(cfg(**env), sock, None)


def test_pipeline_routes_logs_only_when_on_and_honours_log_item_rate_limits() -> None:
    off = _pipeline(SENTRY_EXT_LOGS="off")
    off.on_telemetry([start(A), fn("hello\n", 1), done(A, 2)])
    assert off.log_router is None and len(off.queue) == 0
    on = _pipeline()
    batch = [start(A), fn("hello\n", 1), done(A, 2)]
    on.on_telemetry(batch)
    assert batch == []  # memory: the decoded batch is let go once parsed (the listener hands it over)
    req = on.queue.get(1.0)  # at once: it is queued
    assert req is not None and len(on.queue) == 1
    on.queue.done(req)
    assert [i.type for i in sent_envelope(req).items] == ["log"] and req.public_key == KEY
    on.limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:log_item:organization"})
    on.on_telemetry([start(B), fn("hello\n", 1), fn("again\n", 2), done(B, 3)])
    assert len(on.queue) == 0 and on.queue.put(req)  # refused by the limit, not by a closed queue
    assert on.discards.snapshot(KEY)[("ratelimit_backoff", "log_item")] == 2


def test_a_request_started_in_the_batch_of_the_last_ones_end_waits_for_its_own_sdk_trace() -> None:
    """background mode: one Telemetry batch carries A's runtimeDone, then B's start and first lines,
    sent before B's SDK posted anything; B's lines take B's SDK trace at B's own runtimeDone."""
    h = Harness(sdk={A: {"trace_id": SDK_TRACE}})
    h.feed(start(A, 1), fn("print in A\n", 2), done(A, 3), start(B, 4), fn("print in B\n", 5))
    assert [log["body"] for log in h.logs()] == ["print in A"]
    h.sdk[B] = {"trace_id": "b" * 32}  # B's SDK envelopes reach the ingest before B's runtimeDone
    h.feed(fn("more in B\n", 6), done(B, 7))
    assert [(log["body"], log["trace_id"]) for log in h.logs()] == [
        ("print in A", SDK_TRACE), ("print in B", "b" * 32), ("more in B", "b" * 32)]
