"""Records in, decisions out: sentry_ext.insight.invocations on parsed records, and the events
sentry_ext.insight.failure_events makes of its decisions."""

from __future__ import annotations

import gzip
import json
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

from helpers import KEY, PROJECT, auth, port_of, post, wait_until
from sentry_ext.config import load
from sentry_ext.protocol.envelope import Envelope
from sentry_ext.insight.failure_events import build_event, build_request
from sentry_ext.insight.invocations import LOOKUPS_PER_REQUEST, Invocations
from sentry_ext.insight.failures import Failure, classify
from sentry_ext.insight.function_logs import parse
from sentry_ext.awslambda.telemetry_records import FunctionLog, parse_batch

RID = "8476a536-e9f4-11e8-9739-2dfe598c3fcd"
TRACE = "771a43a4192642f0b136d5159a501700"
DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"


def rec(rtype: str, **record: Any) -> Dict[str, Any]:
    return {"time": "2026-11-28T06:32:50.000Z", "type": rtype, "record": record}


def done(rid: str = RID, status: str = "success", error_type: Optional[str] = None, ms: float = 12.0) -> Dict[str, Any]:
    extra = {"errorType": error_type} if error_type else {}
    return rec("platform.runtimeDone", requestId=rid, status=status, metrics={"durationMs": ms}, **extra)


def report(rid: str = RID, status: str = "success", error_type: Optional[str] = None, used: int = 60,
           size: int = 128, ms: float = 15.0) -> Dict[str, Any]:
    extra = {"errorType": error_type} if error_type else {}
    return rec("platform.report", requestId=rid, status=status, **extra,
               metrics={"durationMs": ms, "billedDurationMs": int(ms) + 1, "memorySizeMB": size, "maxMemoryUsedMB": used})


class Recorder:
    def __init__(self, kinds: Any = ("timeout", "oom", "exit", "init")) -> None:
        self.failures: List[Failure] = []
        self.inv = Invocations(self.failures.append, kinds)

    def feed(self, *items: Dict[str, Any]) -> None:
        records = parse_batch(list(items))
        # the log router's part, simplified: parse, and lines without a request id are the current one's
        lines = {}
        for record in records:
            if isinstance(record, FunctionLog):
                line = parse(record.line, record.time)
                if line is not None:
                    lines[id(record)] = line if line.request_id else line._replace(
                        request_id=self.inv.current_request_id())
        self.inv.feed(records, lines)


@pytest.mark.parametrize("status,error_type,used,kind", [
    ("success", None, 60, None),
    ("error", "Unhandled", 60, None),             # the handler raised: the SDK reports it
    ("error", "Runtime.Unknown", 128, None),      # a handler error even at the memory limit
    ("timeout", "Sandbox.Timedout", 60, "timeout"),
    ("timeout", "Sandbox.Timeout", 60, "timeout"),
    ("timeout", None, 128, "oom"),                # Lambda reporting a memory kill as a timeout
    ("error", "Runtime.OutOfMemory", 128, "oom"),
    ("error", "Runtime.ExitError", 60, "exit"),
    ("failure", "Runtime.ExitError", 60, "exit"),
    ("error", "Runtime.ExitError", 128, "oom"),
])
def test_classification_keys_on_error_type_status_and_memory(status: str, error_type: Optional[str], used: int,
                                                             kind: Optional[str]) -> None:
    r = Recorder()
    r.feed(rec("platform.start", requestId=RID), done(status=status, error_type=error_type),
           report(status=status, error_type=error_type, used=used))
    assert [f.kind for f in r.failures] == ([kind] if kind else [])
    report_record = parse_batch([report(status=status, error_type=error_type, used=used)])[0]
    assert classify(status, error_type, report_record) == kind  # type: ignore[arg-type]


def test_one_decision_per_request_whatever_arrives_later() -> None:
    r = Recorder()
    r.inv.invoked(RID, {"type": "X-Amzn-Trace-Id", "value": "Root=1-abc-def;Sampled=0"})
    r.feed(done(status="error", error_type="Runtime.ExitError"))
    failure = r.inv.settle(RID)  # end mode: decided before the drain, from runtimeDone alone
    assert failure is not None and failure.kind == "exit" and failure.report is None
    r.feed(report(status="error", error_type="Runtime.ExitError"))
    assert r.inv.settle_all() == [] and len(r.failures) == 1
    assert failure.cold_start and failure.xray == "Root=1-abc-def;Sampled=0"


def test_sdk_trace_logs_and_cold_start_belong_to_their_request() -> None:
    r = Recorder()
    r.feed(rec("platform.start", requestId="first"), done("first"), report("first"))
    r.inv.note_envelope({"trace": {"trace_id": "f" * 32}})  # after first's runtimeDone: not first's
    r.inv.invoked("second")
    r.inv.note_envelope({"event_id": "x"})  # no trace header (a session): nothing
    r.inv.note_envelope({"trace": {"trace_id": "NOT-HEX"}})
    r.inv.note_envelope({"trace": {"trace_id": TRACE, "release": "app@1.2", "environment": "prod", "public_key": "k"}})
    r.inv.note_envelope({"trace": {"trace_id": "e" * 32}})  # the first trace seen wins
    assert r.inv.current_request_id() == "second" and r.inv.sdk_trace("first") == {}
    assert r.inv.sdk_trace("second")["trace_id"] == TRACE
    batch = [{"time": "2026-11-28T06:32:5%d.000Z" % (i % 10), "type": "function", "record": "line %d\n" % i}
             for i in range(30)]
    batch.append({"time": "t", "type": "function", "record": {"message": "json line", "requestId": "second"}})
    batch.append({"time": "t", "type": "function", "record": {"message": "other's line", "requestId": "first"}})
    r.feed(*batch)
    r.feed(done("second", "timeout", "Sandbox.Timedout", 3000.0), report("second", "timeout", "Sandbox.Timedout"))
    assert len(r.failures) == 1
    failure = r.failures[0]
    assert failure.request_id == "second" and not failure.cold_start
    assert failure.sdk_trace == {"trace_id": TRACE, "release": "app@1.2", "environment": "prod"}
    assert len(failure.log_lines) == 20 and failure.log_lines[-1][1:] == ("info", "json line")
    assert failure.log_lines[0][2] == "line 11"


def test_failed_init_is_one_init_failure() -> None:
    r = Recorder()
    r.feed(rec("platform.initStart", phase="init", initializationType="on-demand"),
           rec("platform.initRuntimeDone", phase="init", status="error", errorType="Runtime.ImportModuleError"),
           rec("platform.initReport", phase="init", status="error", errorType="Runtime.ImportModuleError",
               metrics={"durationMs": 250.0}))
    assert r.inv.await_outcome(time.monotonic())  # nothing more to wait for
    # the invocation that met the failed Init reports its error too: not a second event
    r.feed(rec("platform.start", requestId=RID), report(status="error", error_type="Runtime.ExitError"))
    assert r.inv.settle_all() == []
    (failure,) = r.failures
    assert (failure.kind, failure.request_id, failure.error_type, failure.duration_ms) == (
        "init", None, "Runtime.ImportModuleError", 250.0)


def test_kinds_filter_and_off() -> None:
    r = Recorder(kinds=("oom",))
    r.feed(done(status="timeout"), report(status="timeout", used=10),
           done("b", "error", "Runtime.OutOfMemory"), report("b", "error", "Runtime.OutOfMemory", used=128))
    assert [f.kind for f in r.failures] == ["oom"]
    off = Recorder(kinds=())
    off.feed(done(status="timeout"), report(status="timeout"))
    assert off.inv.settle_all() == [] and off.failures == []


def test_await_outcome_waits_for_the_report_then_settle_all_decides() -> None:
    r = Recorder()
    r.inv.invoked(RID)
    r.feed(done(status="timeout", error_type="Sandbox.Timedout", ms=3000.0))
    threading.Timer(0.2, r.feed, args=(report(status="timeout", error_type="Sandbox.Timedout", used=128),)).start()
    t0 = time.monotonic()
    assert r.inv.await_outcome(time.monotonic() + 3)
    assert 0.15 < time.monotonic() - t0 < 2
    # as at SHUTDOWN: settle_all waits for a decision still being reported on the feeding thread
    assert r.inv.settle_all() == []
    assert [f.kind for f in r.failures] == ["oom"]  # the report turned the timeout into a memory kill
    # and without a report by the deadline, the runtimeDone alone decides at SHUTDOWN
    late = Recorder()
    late.inv.invoked(RID)
    late.feed(done(status="timeout", error_type="Sandbox.Timedout"))
    assert not late.inv.await_outcome(time.monotonic() + 0.1)
    assert [f.kind for f in late.inv.settle_all()] == ["timeout"]


def test_wait_for_records_with_a_deadline() -> None:
    r = Recorder()
    assert not r.inv.wait(RID, time.monotonic() + 0.05)
    r.feed(rec("platform.start", requestId=RID))
    assert r.inv.wait(RID, time.monotonic(), ("start", "runtimeDone"))
    assert not r.inv.wait(RID, time.monotonic() + 0.05)


def test_state_is_bounded_and_a_broken_callback_is_survived() -> None:
    calls = []

    def broken(failure: Failure) -> None:
        calls.append(failure)
        raise RuntimeError("boom")

    inv = Invocations(broken, keep=8)
    inv.feed(parse_batch([rec("platform.start", requestId="r%d" % i) for i in range(100)]))
    assert len(inv._requests) == 8
    inv.feed(parse_batch([done("r99", "timeout"), report("r99", "timeout")]))
    assert len(calls) == 1


def test_failure_event_carries_the_facts() -> None:
    cfg = load({"SENTRY_DSN": DSN, "AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_FUNCTION_VERSION": "7",
                "AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "SENTRY_RELEASE": "env-release",
                "SENTRY_ENVIRONMENT": "env-environment"})
    r = Recorder()
    r.inv.invoked(RID, {"value": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"})
    r.inv.note_envelope({"trace": {"trace_id": TRACE, "release": "sdk-release"}})
    r.feed({"time": "2026-11-28T06:32:51.000Z", "type": "function", "record": "[INFO]\tworking on it\n"},
           done(status="timeout", error_type="Sandbox.Timedout", ms=3000.4),
           report(status="timeout", error_type="Sandbox.Timedout", used=60, ms=3001.2))
    (failure,) = r.failures
    event = build_event(failure, cfg, now=1700000000.0)
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "LambdaTimeout" and exc["value"] == "Task timed out after 3.00 s"
    assert exc["mechanism"] == {"type": "aws_lambda_extension", "handled": False}
    assert event["level"] == "fatal" and event["fingerprint"] == ["aws-lambda-extension", "orders", "timeout"]
    assert event["release"] == "sdk-release" and event["environment"] == "env-environment"
    assert event["tags"]["aws_lambda.request_id"] == RID and event["tags"]["aws_lambda.error_type"] == "Sandbox.Timedout"
    assert event["tags"]["aws_lambda.cold_start"] == "true" and event["tags"]["aws_lambda.region"] == "eu-west-1"
    assert "xray_trace_id" not in event["tags"]  # the SDK's trace is the link
    assert event["contexts"]["trace"]["trace_id"] == TRACE and len(event["contexts"]["trace"]["span_id"]) == 16
    assert event["contexts"]["aws_lambda"]["memory_size_mb"] == 128
    assert event["contexts"]["aws_lambda_report"]["max_memory_used_mb"] == 60
    assert event["breadcrumbs"]["values"][0]["message"] == "working on it"
    assert event["breadcrumbs"]["values"][0]["level"] == "info"
    assert len(event["event_id"]) == 32

    req = build_request(failure, cfg)
    assert req.upstream_path == "/api/42/envelope/" and "sentry_key=0123456789abcdef" in req.headers["x-sentry-auth"]
    envelope = Envelope.parse(req.body)
    assert envelope.headers["trace"] == {"trace_id": TRACE, "public_key": "0123456789abcdef0123456789abcdef",
                                         "release": "sdk-release", "environment": "env-environment"}
    (item,) = envelope.items
    assert item.type == "event" and json.loads(item.payload)["event_id"] == envelope.headers["event_id"] == req.event_id


def test_without_an_sdk_trace_the_xray_id_is_a_tag_and_oom_facts_read_well() -> None:
    cfg = load({"SENTRY_DSN": DSN})
    r = Recorder()
    r.inv.invoked(RID, {"value": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"})
    r.feed(done(status="error", error_type="Runtime.OutOfMemory"),
           report(status="error", error_type="Runtime.OutOfMemory", used=128, size=128))
    event = build_event(r.failures[0], cfg)
    assert event["exception"]["values"][0]["value"] == "Out of memory: 128 of 128 MB used"
    assert event["tags"]["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793" and "trace" not in event["contexts"]
    assert "release" not in event and event["fingerprint"][1] == "unknown-function"


# -- in the pipeline: queued like an SDK request -----------------------------------------------

def timeout_batch(rid: str) -> List[Dict[str, Any]]:
    return [rec("platform.start", requestId=rid), done(rid, "timeout", "Sandbox.Timedout", 1000.0),
            report(rid, "timeout", "Sandbox.Timedout")]


def test_failure_events_obey_mirrored_rate_limits_and_count_when_dropped(pipelines: Any, upstream: Any) -> None:
    pipe = pipelines(SENTRY_EXT_UNFINISHED_TRANSACTIONS="off")  # the failure events alone (test_unfinished.py)
    pipe.on_telemetry(timeout_batch("delivered"))
    assert pipe.flush(5)
    (event,) = [json.loads(p) for _, _, p in upstream.items("event")]
    assert event["tags"]["aws_lambda.request_id"] == "delivered"

    assert pipe.limits.update(KEY, 429, {"X-Sentry-Rate-Limits": "60:error:key"})
    pipe.on_telemetry(timeout_batch("limited"))
    assert pipe.discards.snapshot(KEY) == {("ratelimit_backoff", "error"): 1}
    assert pipe.stats.get("failure_events") == 2 and len(pipe.queue) == 0


def test_a_full_queue_drops_the_failure_event_and_counts_it(pipelines: Any) -> None:
    pipe = pipelines(start=False, SENTRY_EXT_QUEUE_MAX_ITEMS="1", SENTRY_EXT_UNFINISHED_TRANSACTIONS="off")
    pipe.queue.put(build_request(Failure("exit", "x", "error", "Runtime.ExitError", False), pipe.cfg))
    pipe.on_telemetry(timeout_batch("overflow"))
    assert pipe.discards.snapshot(KEY) == {("queue_overflow", "error"): 1}
    assert pipe.stats.dropped("queue_overflow") == 1


def sdk_envelope(trace_id: str, request_id: str) -> bytes:
    """A gzipped transaction envelope as sentry-python's AwsLambdaIntegration sends it."""
    event = {"type": "transaction", "contexts": {"trace": {"trace_id": trace_id, "span_id": "b" * 16}},
             "extra": {"lambda": {"function_name": "orders", "aws_request_id": request_id}}}
    payload = json.dumps(event).encode()
    header = {"event_id": "c" * 32, "sent_at": "2026-11-28T06:32:50Z",
              "trace": {"trace_id": trace_id, "public_key": "k", "release": "shop@2", "environment": "prod"}}
    return gzip.compress(json.dumps(header).encode() + b"\n" + json.dumps(
        {"type": "transaction", "length": len(payload)}).encode() + b"\n" + payload + b"\n")


def test_an_sdk_envelope_before_its_invoke_belongs_to_the_request_it_names(pipelines: Any, upstream: Any) -> None:
    """background mode: Lambda hands INVOKE to the runtime and the extension at once, and the SDK's
    envelopes of the second request can reach the ingest before the lifecycle loop read its INVOKE
    (while the first request, whose runtimeDone is not in yet, still looks current)."""
    pipe = pipelines(SENTRY_EXT_LOGS="on")
    headers = dict(auth(), **{"Content-Encoding": "gzip"})
    path = "/api/%s/envelope/" % PROJECT
    pipe.invoked({"requestId": "first"})
    assert post(port_of(pipe), path, sdk_envelope("a" * 32, "first"), headers)[0] == 200
    assert post(port_of(pipe), path, sdk_envelope("b" * 32, "second"), headers)[0] == 200  # before its INVOKE
    pipe.invoked({"requestId": "second"})
    for rid in ("first", "second"):
        pipe.on_telemetry([rec("platform.start", requestId=rid),
                           {"time": "2026-11-28T06:32:50.000Z", "type": "function", "record": "hello %s\n" % rid},
                           done(rid)])
    assert pipe.invocations.sdk_trace("first")["trace_id"] == "a" * 32
    assert pipe.invocations.sdk_trace("second") == {"trace_id": "b" * 32, "release": "shop@2", "environment": "prod"}
    assert pipe.flush(5) and wait_until(lambda: len(upstream.logs()) == 2, 5)
    traces = {log["body"]: log["trace_id"] for log in upstream.logs()}
    assert traces == {"hello first": "a" * 32, "hello second": "b" * 32}


def test_the_request_an_sdk_envelope_names_is_read_sparingly() -> None:
    r = Recorder()
    asked: List[str] = []

    def named(rid: Optional[str]) -> Any:
        return lambda: asked.append(str(rid)) or rid

    r.inv.note_envelope({"trace": {"trace_id": "a" * 32}}, named("early"))  # before any INVOKE: kept for it
    r.inv.invoked("first")
    r.inv.note_envelope({"trace": {"trace_id": TRACE}}, named(None))  # no request id in it: the running one's
    r.inv.note_envelope({"trace": {"trace_id": TRACE}}, named("first"))  # the running request's trace: not read
    r.inv.note_envelope({"trace": {"trace_id": "d" * 32}}, lambda: 1 // 0)  # a broken reader is survived
    for _ in range(6):  # another trace, no request id: read a bounded number of times per request
        r.inv.note_envelope({"trace": {"trace_id": "f" * 32}}, named(None))
    assert asked == ["early", "None", "None", "None"]
    assert r.inv.sdk_trace("first") == {"trace_id": TRACE}
    r.inv.invoked("early")
    assert r.inv.sdk_trace("early") == {"trace_id": "a" * 32}


def test_overlapping_requests_never_get_another_requests_sdk_trace() -> None:
    """Managed Instances: no INVOKE, requests overlap. Once the body reads are spent, an envelope's
    trace cannot be placed: it goes to no request (not to the one that started last)."""
    r = Recorder()
    r.feed(rec("platform.start", requestId="a"), rec("platform.start", requestId="b"))
    for _ in range(LOOKUPS_PER_REQUEST + 2):  # a's envelopes, each read until the reads are spent
        r.inv.note_envelope({"trace": {"trace_id": "a" * 32}}, lambda: "a")
    r.inv.note_envelope({"trace": {"trace_id": "c" * 32}})  # names no request: whose is unknown
    r.feed(report("b", "timeout", "Sandbox.Timedout"), report("a", "timeout", "Sandbox.Timedout"))
    traces = {f.request_id: f.sdk_trace for f in r.failures}
    assert traces == {"a": {"trace_id": "a" * 32}, "b": {}}
    cfg = load({"SENTRY_DSN": DSN})
    event = build_event(r.failures[0], cfg)
    assert event["tags"]["aws_lambda.request_id"] == "b" and "trace" not in event["contexts"]
    assert "trace" not in Envelope.parse(build_request(r.failures[0], cfg).body).headers


def test_overlapping_requests_in_the_pipeline_keep_their_own_traces(pipelines: Any, upstream: Any) -> None:
    """The same through the ingest: request a's SDK sends more envelopes than are read while b,
    started after it, runs; b's LambdaTimeout must not carry a's trace."""
    pipe = pipelines(AWS_LAMBDA_INITIALIZATION_TYPE="lambda-managed-instances")
    headers = dict(auth(), **{"Content-Encoding": "gzip"})
    path = "/api/%s/envelope/" % PROJECT
    pipe.on_telemetry([rec("platform.start", requestId="a"), rec("platform.start", requestId="b")])
    for _ in range(LOOKUPS_PER_REQUEST + 2):
        assert post(port_of(pipe), path, sdk_envelope("a" * 32, "a"), headers)[0] == 200
    pipe.on_telemetry([report("b", "timeout", "Sandbox.Timedout")])
    assert pipe.flush(5) and wait_until(lambda: len(upstream.items("event")) == 1, 5)
    ((record, _, payload),) = upstream.items("event")
    event, header = json.loads(payload), record.envelope.header
    assert event["tags"]["aws_lambda.request_id"] == "b"
    assert "trace" not in event["contexts"] and "trace" not in header, (header, event["contexts"])
    assert pipe.invocations.sdk_trace("a")["trace_id"] == "a" * 32
