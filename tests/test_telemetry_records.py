"""The Telemetry record parser on real-shaped batches (schema 2022-12-13 and 2025-01-29 fields)."""

from __future__ import annotations

import json

from sentry_ext.awslambda import telemetry_records as tr

RID = "6d0f25a3-60bb-4a63-b1a8-1b6e9e2b4f1c"
XRAY = "Root=1-674800d7-3b1c2f5e6a7d8e9f01234567;Parent=53995c3f42cd8ad8;Sampled=1"

# Shapes as the Telemetry API documents and Lambda sends them (times, spans and all).
BATCH = json.loads(r"""[
 {"time": "2026-11-28T06:32:50.001Z", "type": "platform.initStart",
  "record": {"initializationType": "on-demand", "phase": "init", "runtimeVersion": "python:3.12.v38",
             "runtimeVersionArn": "arn:aws:lambda:us-east-1::runtime:abc", "functionName": "orders",
             "functionVersion": "$LATEST", "instanceId": "i-1", "instanceMaxMemory": 134217728}},
 {"time": "2026-11-28T06:32:50.420Z", "type": "platform.initRuntimeDone",
  "record": {"initializationType": "on-demand", "phase": "init", "status": "success",
             "spans": [{"name": "someTimeSpan", "start": "2026-11-28T06:32:50.002Z", "durationMs": 400.1}]}},
 {"time": "2026-11-28T06:32:50.421Z", "type": "platform.initReport",
  "record": {"initializationType": "on-demand", "phase": "init", "status": "success",
             "metrics": {"durationMs": 419.8}}},
 {"time": "2026-11-28T06:32:50.430Z", "type": "platform.start",
  "record": {"requestId": "%(rid)s", "version": "$LATEST",
             "tracing": {"spanId": "54565fb41ac79632", "type": "X-Amzn-Trace-Id", "value": "%(xray)s"}}},
 {"time": "2026-11-28T06:32:50.431Z", "type": "function", "record": "[INFO]\t2026-11-28T06:32:50.431Z\t%(rid)s\thello\n"},
 {"time": "2026-11-28T06:32:50.432Z", "type": "function",
  "record": {"timestamp": "2026-11-28T06:32:50Z", "level": "INFO", "message": "json hello", "requestId": "%(rid)s"}},
 {"time": "2026-11-28T06:32:53.430Z", "type": "platform.runtimeDone",
  "record": {"requestId": "%(rid)s", "status": "timeout", "errorType": "Sandbox.Timedout",
             "metrics": {"durationMs": 3000.0, "producedBytes": 0},
             "tracing": {"spanId": "54565fb41ac79632", "type": "X-Amzn-Trace-Id", "value": "%(xray)s"},
             "spans": [{"name": "responseLatency", "start": "2026-11-28T06:32:50.431Z", "durationMs": 3000.0}]}},
 {"time": "2026-11-28T06:32:53.440Z", "type": "platform.report",
  "record": {"requestId": "%(rid)s", "status": "timeout", "errorType": "Sandbox.Timedout",
             "metrics": {"durationMs": 3000.7, "billedDurationMs": 3000, "memorySizeMB": 128,
                         "maxMemoryUsedMB": 128, "initDurationMs": 419.8},
             "tracing": {"type": "X-Amzn-Trace-Id", "value": "%(xray)s"}, "tenantId": "t-1"}},
 {"time": "2026-11-28T06:32:53.441Z", "type": "platform.logsDropped",
  "record": {"droppedBytes": 5000, "droppedRecords": 3, "reason": "Consumer seems to have fallen behind"}},
 {"time": "2026-11-28T06:32:53.442Z", "type": "platform.telemetrySubscription",
  "record": {"name": "sentry-lambda-extension", "state": "Subscribed", "types": ["platform"]}},
 {"time": "2026-11-28T06:32:53.443Z", "type": "platform.restoreStart",
  "record": {"functionName": "orders", "functionVersion": "3"}},
 {"time": "2026-11-28T06:32:53.444Z", "type": "platform.restoreRuntimeDone", "record": {"status": "success"}},
 {"time": "2026-11-28T06:32:53.445Z", "type": "platform.restoreReport",
  "record": {"status": "failure", "errorType": "Runtime.ExitError", "metrics": {"durationMs": 12.5}}}
]""".replace("%(rid)s", RID).replace("%(xray)s", XRAY))


def test_every_documented_type_parses_into_its_record() -> None:
    records = tr.parse_batch(BATCH)
    kinds = [type(r).__name__ for r in records]
    # platform.telemetrySubscription is not acted upon: left out
    assert kinds == ["InitStart", "InitRuntimeDone", "InitReport", "Start", "FunctionLog", "FunctionLog",
                     "RuntimeDone", "Report", "LogsDropped", "RestoreStart", "RestoreRuntimeDone", "RestoreReport"]
    init_start, init_done, init_report, start, text_log, json_log, done, report, dropped = records[:9]
    assert init_start.function_name == "orders" and init_start.phase == "init"
    assert init_done.status == "success" and init_report.duration_ms == 419.8
    assert start.request_id == RID and start.tracing == XRAY and start.time == "2026-11-28T06:32:50.430Z"
    assert isinstance(text_log.line, str) and text_log.line.endswith("hello\n")
    assert isinstance(json_log.line, dict) and json_log.line["message"] == "json hello"
    assert (done.status, done.error_type, done.duration_ms, done.tracing) == ("timeout", "Sandbox.Timedout", 3000.0, XRAY)
    assert (report.memory_size_mb, report.max_memory_used_mb, report.billed_duration_ms) == (128, 128, 3000)
    assert report.init_duration_ms == 419.8 and report.restore_duration_ms is None
    assert dropped.dropped_records == 3
    assert records[-1].status == "failure" and records[-1].error_type == "Runtime.ExitError"


def test_log_records_share_their_type_string() -> None:
    """Memory: 1,000 records of a batch do not each keep the decoder's own "function" string."""
    batch = json.loads(json.dumps([{"time": "t", "type": kind, "record": "x\n"} for kind in ("function", "extension") * 3]))
    records = tr.parse_batch(batch)
    assert [r.type for r in records] == ["function", "extension"] * 3
    assert len({id(r.type) for r in records}) == 2


def test_unknown_types_and_fields_are_ignored() -> None:
    batch = [
        {"time": "t", "type": "platform.somethingNew", "record": {"requestId": RID}},
        {"time": "t", "type": "platform.runtimeDone", "future": 1,
         "record": {"requestId": RID, "status": "success", "newField": {"deep": [1, 2]}, "metrics": {"x": 1}}},
        {"time": "t", "type": "platform.report", "record": {"requestId": RID, "status": "degraded"}},  # future status
    ]
    done, report = tr.parse_batch(batch)
    assert isinstance(done, tr.RuntimeDone) and done.status == "success" and done.duration_ms is None
    assert isinstance(report, tr.Report) and report.status == "degraded"


def test_invalid_records_are_left_out_and_nothing_raises() -> None:
    bad_ids = ["", "x" * 65, "../../etc", "id with space", "ü-id", 12, None, ["a"], {"a": 1}, "-leading-dash"]
    batch = [{"type": "platform.runtimeDone", "record": {"requestId": rid, "status": "success"}} for rid in bad_ids]
    batch += [
        {"type": "platform.runtimeDone", "record": {"requestId": RID, "status": 1}},
        {"type": "platform.runtimeDone", "record": {"requestId": RID, "status": "x" * 100}},
        {"type": "platform.runtimeDone", "record": "not an object"},
        {"type": 7, "record": {}}, {"record": {}}, "a string", None, 3.5, [[]],
        {"type": "function", "record": 42},
    ]
    assert tr.parse_batch(batch) == []
    for junk in (None, {}, "[]", 5, {"type": "platform.start"}):
        assert tr.parse_batch(junk) == []


def test_fields_are_checked_and_capped() -> None:
    record = {"requestId": RID, "status": "error", "errorType": "E" * 300,
              "metrics": {"durationMs": float("nan"), "billedDurationMs": True, "memorySizeMB": -1,
                          "maxMemoryUsedMB": "128", "initDurationMs": 1e300},
              "tracing": {"value": "bad\nheader"}}
    report = tr.parse_batch([{"time": "x" * 100, "type": "platform.report", "record": record}])[0]
    assert isinstance(report, tr.Report)
    assert report.error_type is None and report.tracing is None and report.time == ""
    assert (report.duration_ms, report.billed_duration_ms, report.memory_size_mb, report.max_memory_used_mb,
            report.init_duration_ms) == (None, None, None, None, None)
    huge = tr.parse_batch([{"type": "function", "record": "y" * (tr.MAX_LOG_CHARS + 10)}])[0]
    assert isinstance(huge, tr.FunctionLog) and len(huge.line) == tr.MAX_LOG_CHARS
    many = [{"type": "platform.start", "record": {"requestId": "r%d" % i}} for i in range(tr.MAX_RECORDS + 5)]
    assert len(tr.parse_batch(many)) == tr.MAX_RECORDS


def test_random_batches_never_raise_nor_reach_the_bookkeeping_unchecked() -> None:
    import random

    from sentry_ext.insight.invocations import Invocations

    rng = random.Random(1128)
    types = list(tr.PLATFORM) + ["function", "extension", "platform.unknown", "", None, 5]
    fields = ["requestId", "status", "errorType", "metrics", "tracing", "phase", "message", "record"]

    def value(depth: int = 0) -> object:
        makers = [lambda: None, lambda: True, lambda: rng.randint(-5, 10 ** 6), lambda: rng.random() * 1e6,
                  lambda: rng.choice(["success", "timeout", "error", RID, "x" * rng.randrange(300), "\u0000\n"]),
                  lambda: float("inf"),
                  lambda: [value(depth + 1) for _ in range(rng.randrange(4))],
                  lambda: {rng.choice(fields): value(depth + 1) for _ in range(rng.randrange(5))},
                  lambda: {"durationMs": value(depth + 1), "maxMemoryUsedMB": value(depth + 1), "memorySizeMB": 128}]
        return makers[rng.randrange(9 if depth < 3 else 6)]()

    failures: list = []
    inv = Invocations(failures.append)
    for _ in range(2000):
        batch = [{"time": value(), "type": rng.choice(types), "record": value()} if rng.random() < 0.9 else value()
                 for _ in range(rng.randrange(6))]
        records = tr.parse_batch(batch)
        inv.feed(records)
        for record in records:
            rid = getattr(record, "request_id", None)
            assert rid is None or tr.request_id(rid) == rid
    inv.settle_all()
    assert len(inv._requests) <= 64 and all(f.kind in ("timeout", "oom", "exit", "init") for f in failures)
