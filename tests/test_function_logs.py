"""Function logs: Telemetry ``function`` records -> LogLine (parse), the bounded LogBatch, and the
envelope ``log`` item (checked by the fake upstream's validator and against sentry-python's own)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from awslambdaric.lambda_runtime_log_utils import JsonFormatter
from sentry_ext.protocol.envelope import Envelope
from sentry_ext.insight.function_logs import (LEVEL_NAMES, MAX_ATTRIBUTE_CHARS, MAX_BODY_CHARS, SEVERITY, TRUNCATED_ATTRIBUTE,
                                      LogLine, iso_to_epoch, level_of, parse)
from sentry_ext.insight.log_batch import (CONTENT_TYPE, DROP_REASON, LINE_OVERHEAD, MAX_CACHED_TAILS, MAX_LOGS_PER_ITEM,
                                  ORIGIN, LogBatch, LogContext, log_envelope, log_item)
from sentry_ext.util.ids import valid_trace_id
from sentry_ext.protocol.discards import Discards, item_outcomes
from tools.fake_upstream import log_item_problems, parse_envelope

REQ = "8f5b1c9e-4e0b-4f6b-9d55-0a1b2c3d4e5f"
EVENT_TIME = "2026-11-28T06:32:55.123Z"
EVENT_EPOCH = datetime.datetime(2026, 11, 28, 6, 32, 55, 123000, tzinfo=datetime.timezone.utc).timestamp()
TRACE = "771a43a4192642f0b136d5159a501700"

# The Python runtime's text formatter (awslambdaric bootstrap._setup_logging), in UTC like there.
RIC_TEXT = logging.Formatter("[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n",
                             "%Y-%m-%dT%H:%M:%S")
RIC_TEXT.converter = time.gmtime


def log_record(level: int, msg: str, request_id: str = REQ, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("app", level, "/var/task/app.py", 7, msg, (), exc_info, func="handler")
    record.aws_request_id = request_id
    record.__dict__.update(extra)
    return record


def ric_text(level: int, msg: str, request_id: str = REQ, exc: bool = False) -> "tuple[str, float]":
    record = log_record(level, msg, request_id, exc)
    return RIC_TEXT.format(record), int(record.created * 1000) / 1000.0


def ric_json(level: int, msg: str, exc: bool = False, **extra: Any) -> Dict[str, Any]:
    # Lambda hands JSON-format records to the Telemetry API as objects.
    return json.loads(JsonFormatter().format(log_record(level, msg, exc=exc, **extra)))


def utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------ text formats


@pytest.mark.parametrize("level,expected", [(logging.DEBUG, "debug"), (logging.INFO, "info"),
                                            (logging.WARNING, "warn"), (logging.ERROR, "error"),
                                            (logging.CRITICAL, "fatal")])
def test_python_text_record(level: int, expected: str) -> None:
    record, created = ric_text(level, "hello %s" % expected)
    line = parse(record, EVENT_TIME, min_level="trace")
    assert line is not None
    assert (line.level, line.body, line.request_id, line.attributes) == (expected, "hello " + expected, REQ, {})
    assert line.timestamp == pytest.approx(created, abs=1e-6)


def test_python_traceback_stays_one_log() -> None:
    record, _ = ric_text(logging.ERROR, "failed", exc=True)
    assert record.count("\n") >= 4
    line = parse(record, EVENT_TIME)
    assert line is not None and line.level == "error" and line.request_id == REQ
    assert line.body.startswith("failed\nTraceback (most recent call last):\n")
    assert line.body.endswith("ValueError: boom")


def test_python_unhandled_error_record() -> None:
    # bootstrap.log_error in text format: no time, no request id, indentation as NO-BREAK SPACE
    record = ("[ERROR] ValueError: boom\rTraceback (most recent call last):\r\u00a0\u00a0File \"/var/task/app.py\", "
              "line 3, in handler\r\u00a0\u00a0\u00a0\u00a0raise ValueError('boom')").replace("\r", "\n")
    line = parse(record, EVENT_TIME)
    assert line is not None
    assert (line.level, line.request_id, line.timestamp) == ("error", None, pytest.approx(EVENT_EPOCH))
    assert line.body.startswith("ValueError: boom\nTraceback") and "raise ValueError('boom')" in line.body


@pytest.mark.parametrize("record", ["[INFO]\tHello world, I am a function!", "[INFO] Hello world, I am a function!"])
def test_level_prefix_without_time_and_request_id(record: str) -> None:
    line = parse(record, EVENT_TIME)
    assert line is not None
    assert (line.level, line.body, line.request_id) == ("info", "Hello world, I am a function!", None)
    assert line.timestamp == pytest.approx(EVENT_EPOCH)


def test_python_record_outside_a_request_has_no_request_id() -> None:
    record, _ = ric_text(logging.WARNING, "at import", request_id="")
    line = parse(record, EVENT_TIME)
    assert line is not None and line.request_id is None and line.body == "at import"


@pytest.mark.parametrize("name,expected", [("INFO", "info"), ("WARN", "warn"), ("ERROR", "error"),
                                           ("DEBUG", "debug"), ("TRACE", "trace"), ("FATAL", "fatal")])
def test_node_text_record(name: str, expected: str) -> None:
    record = "2026-11-28T06:32:55.457Z\t%s\t%s\tvalue: %s\n" % (REQ, name, '{"a":1}')
    line = parse(record, EVENT_TIME, min_level="trace")
    assert line is not None
    assert (line.level, line.request_id, line.body) == (expected, REQ, 'value: {"a":1}')
    assert line.timestamp == pytest.approx(utc("2026-11-28T06:32:55.457Z"))


def test_node_uncaught_exception_outside_request() -> None:
    record = ('2026-11-28T06:32:55.457Z\tundefined\tERROR\tUncaught Exception \t{"errorType":"Error",'
              '"errorMessage":"boom","stack":["Error: boom","    at Object.<anonymous> (/var/task/index.js:1:7)"]}')
    line = parse(record, EVENT_TIME)
    assert line is not None and line.level == "error" and line.request_id is None
    assert line.body.startswith("Uncaught Exception \t{")


@pytest.mark.parametrize("record", ["hello world", "hello world\n", "  indented stays", "multi\nline print",
                                    "[not a level] text", "2026-11-28 is a date\tbut\tnot\ta record"])
def test_plain_print_lines(record: str) -> None:
    line = parse(record, EVENT_TIME)
    assert line is not None
    assert (line.level, line.request_id, line.body) == ("info", None, record.rstrip("\n"))
    assert line.timestamp == pytest.approx(EVENT_EPOCH)


@pytest.mark.parametrize("record", [
    "START RequestId: %s Version: $LATEST" % REQ,
    "END RequestId: %s" % REQ,
    "REPORT RequestId: %s\tDuration: 2.51 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 39 MB" % REQ,
    "INIT_START Runtime Version: python:3.12.v38\tRuntime Version ARN: arn:aws:lambda:eu-west-1::runtime:abc",
    "INIT_REPORT Init Duration: 10000.00 ms\tPhase: init\tStatus: timeout",
    "EXTENSION\tName: sentry-lambda-extension\tState: Ready\tEvents: [INVOKE, SHUTDOWN]",
    "TELEMETRY\tName: sentry-lambda-extension\tState: Subscribed\tTypes: [Platform]",
    "[sentry-lambda-extension] INFO flushed 3 envelopes",
    "", "\n",
])
def test_platform_and_own_lines_are_not_logs(record: str) -> None:
    assert parse(record, EVENT_TIME, min_level="trace") is None


# ------------------------------------------------------------------------------ JSON format


def test_json_record_from_the_python_runtime() -> None:
    record = ric_json(logging.WARNING, "low disk", order_id=42, ratio=0.5, retry=True, tags=["a", "b"])
    line = parse(record, EVENT_TIME)
    assert line is not None
    assert (line.level, line.body, line.request_id) == ("warn", "low disk", REQ)
    # whole seconds in JSON format: the event's time (ms) within that second is used instead
    assert utc(record["timestamp"]) <= line.timestamp < utc(record["timestamp"]) + 1
    late = parse(record, "2030-01-01T00:00:00.500Z")
    assert late is not None and late.timestamp == utc(record["timestamp"])
    assert line.attributes["logger.name"] == "app"
    assert line.attributes["order_id"] == 42 and line.attributes["ratio"] == 0.5 and line.attributes["retry"] is True
    assert line.attributes["tags"] == '["a","b"]'
    assert not {"timestamp", "level", "message", "requestId", "stackTrace", "location"} & set(line.attributes)


def test_json_exception_record() -> None:
    record = ric_json(logging.ERROR, "failed", exc=True)
    line = parse(record, EVENT_TIME)
    assert line is not None and line.level == "error" and line.body == "failed"
    assert line.attributes["exception.type"] == "ValueError"
    assert line.attributes["exception.message"] == "boom"
    assert 'raise ValueError("boom")' in line.attributes["exception.stacktrace"]
    assert line.attributes["location"] == "/var/task/app.py:handler:7"


def test_json_record_from_the_java_runtime() -> None:
    record = {"timestamp": "2026-11-28T06:32:55.358Z", "level": "WARN", "message": "from java",
              "logger": "example.Handler", "AWSRequestId": REQ}
    line = parse(record, EVENT_TIME)
    assert line is not None and (line.level, line.request_id) == ("warn", REQ)
    assert line.attributes == {"logger.name": "example.Handler"}
    assert line.timestamp == pytest.approx(utc("2026-11-28T06:32:55.358Z"))


def test_json_record_with_object_message_and_node_shape() -> None:
    node = {"timestamp": "2026-11-28T06:32:55.457Z", "level": "INFO", "requestId": REQ, "message": {"a": [1, 2]}}
    line = parse(node, EVENT_TIME)
    assert line is not None and line.body == '{"a":[1,2]}' and line.request_id == REQ
    assert line.timestamp == pytest.approx(utc("2026-11-28T06:32:55.457Z"))


def test_json_record_without_message() -> None:
    record = {"timestamp": "2026-11-28T06:32:55.457Z", "level": "WARN", "requestId": REQ, "order": 5}
    line = parse(record, EVENT_TIME)
    assert line is not None and json.loads(line.body) == record and line.attributes == {"order": 5}
    error = parse({"level": "ERROR", "errorType": "E", "errorMessage": "went wrong"}, EVENT_TIME)
    assert error is not None and error.body == "went wrong" and error.attributes == {"exception.type": "E"}
    assert parse({"level": "INFO"}, EVENT_TIME) is None and parse({"message": ""}, EVENT_TIME) is None


def test_json_looking_string_is_read_as_a_record() -> None:
    # AWS Lambda Powertools' Logger prints JSON in text format; Telemetry hands it over as a string.
    powertools = json.dumps({"level": "ERROR", "location": "handler:10", "message": "payment failed",
                             "timestamp": "2026-11-28 06:32:55,494+0000", "service": "payment",
                             "cold_start": True, "function_request_id": REQ, "xray_trace_id": "1-abc-def"})
    line = parse(powertools, EVENT_TIME)
    assert line is not None
    assert (line.level, line.body, line.request_id) == ("error", "payment failed", REQ)
    assert line.timestamp == pytest.approx(utc("2026-11-28T06:32:55.494Z"))
    assert line.attributes["service"] == "payment" and line.attributes["cold_start"] is True
    for text in ('{"just": "data"}', "{not json}", "[1, 2]", '{"level": "INFO"'):
        plain = parse(text, EVENT_TIME)
        assert plain is not None and plain.body == text and plain.attributes == {}


def test_json_record_attribute_limits() -> None:
    record: Dict[str, Any] = {"level": "INFO", "message": "m", "big": "x" * (MAX_ATTRIBUTE_CHARS * 2),
                              "nan": float("nan"), "huge": 1 << 70, "nested": {"deep": [{"x": None}]},
                              "sentry.release": "spoofed", "k" * 200: "long key", "none": None}
    record.update(("extra%03d" % i, i) for i in range(100))
    line = parse(record, EVENT_TIME)
    assert line is not None
    assert len(line.attributes["big"]) == MAX_ATTRIBUTE_CHARS
    assert line.attributes["nan"] == "nan" and line.attributes["huge"] == str(1 << 70)
    assert line.attributes["nested"] == '{"deep":[{"x":null}]}'
    assert "sentry.release" not in line.attributes and "k" * 200 not in line.attributes and "none" not in line.attributes
    assert len(line.attributes) <= 32


# ------------------------------------------------------------------------------ levels, limits, garbage


def test_level_names_and_severity() -> None:
    assert SEVERITY == {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
    for spelling, level in [("WARNING", "warn"), ("warning", "warn"), ("Warn", "warn"), ("CRITICAL", "fatal"),
                            ("fatal", "fatal"), ("TRACE", "trace"), ("crit", "fatal"), ("fail", "error"),
                            ("information", "info"), ("DEBUG", "debug")]:
        assert level_of(spelling) == level
    assert level_of("NOTSET") is None and level_of(20) is None
    assert set(LEVEL_NAMES.values()) == set(SEVERITY)


@pytest.mark.parametrize("min_level,kept", [
    ("trace", {"debug", "info", "warn", "error", "fatal", "print"}),
    ("info", {"info", "warn", "error", "fatal", "print"}),
    ("warn", {"warn", "error", "fatal"}),
    ("error", {"error", "fatal"}),
    ("fatal", {"fatal"}),
])
def test_level_filter(min_level: str, kept: set) -> None:
    samples = {
        "debug": [ric_text(logging.DEBUG, "d")[0], "2026-11-28T06:32:55.457Z\t%s\tDEBUG\td" % REQ,
                  ric_json(logging.DEBUG, "d")],
        "info": [ric_text(logging.INFO, "i")[0], ric_json(logging.INFO, "i")],
        "warn": [ric_text(logging.WARNING, "w")[0], "2026-11-28T06:32:55.457Z\t%s\tWARN\tw" % REQ],
        "error": [ric_text(logging.ERROR, "e")[0], ric_json(logging.ERROR, "e"), "[ERROR] Exception: x"],
        "fatal": [ric_text(logging.CRITICAL, "f")[0], '{"level": "FATAL", "message": "f"}'],
        "print": ["plain"],
    }
    for name, records in samples.items():
        for record in records:
            assert (parse(record, EVENT_TIME, min_level=min_level) is not None) == (name in kept), (name, record)


def test_min_level_in_any_spelling() -> None:
    warning = ric_text(logging.WARNING, "w")[0]
    assert parse(warning, EVENT_TIME, min_level="WARNING") is not None
    assert parse(warning, EVENT_TIME, min_level="ERROR") is None
    assert parse("print", EVENT_TIME, min_level="nonsense") is not None  # unknown: the default, info


def test_huge_lines_are_truncated() -> None:
    mib = 1024 * 1024
    plain = parse("x" * mib, EVENT_TIME)
    assert plain is not None and plain.body == "x" * MAX_BODY_CHARS
    assert plain.attributes[TRUNCATED_ATTRIBUTE] == mib
    python = parse("[INFO]\t2026-11-28T06:32:55.124Z\t%s\t%s" % (REQ, "y" * mib), EVENT_TIME)
    assert python is not None and python.request_id == REQ and len(python.body) == MAX_BODY_CHARS
    assert python.attributes[TRUNCATED_ATTRIBUTE] == mib
    as_json = parse({"level": "INFO", "message": "z" * mib, "requestId": REQ}, EVENT_TIME)
    assert as_json is not None and len(as_json.body) == MAX_BODY_CHARS and as_json.attributes[TRUNCATED_ATTRIBUTE] == mib
    assert parse("w" * 100, EVENT_TIME, max_body=10).body == "w" * 10  # type: ignore[union-attr]
    for line in (plain, python, as_json):
        assert line.size < 2 * MAX_BODY_CHARS


@pytest.mark.parametrize("record", [None, 5, 1.5, True, [], ["[INFO]"], b"[INFO] bytes", object(), {},
                                    {"level": 5}, {"message": None}, {1: "int key"}, "[", "[]", "[INFO",
                                    "2026-", "\t\t\t", "\x00\x01", "{", "}", "\ud800"])
def test_garbage_never_raises(record: Any) -> None:
    line = parse(record, EVENT_TIME)
    assert line is None or (isinstance(line, LogLine) and isinstance(line.body, str))


@pytest.mark.parametrize("bad_time", [None, "", "yesterday", 12, "2026-13-01T00:00:00Z", "2026-11-28T25:00:00Z",
                                      "2026-11-28T06:32:5xZ", "2026-11-28T06:32:55+5", "1969-12-31T23:59:59Z"])
def test_bad_event_time_falls_back_to_now(bad_time: Any) -> None:
    before = time.time()
    line = parse("hello", bad_time)
    assert line is not None and before <= line.timestamp <= time.time()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.dictionaries(st.text(max_size=20), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10), max_size=8)), st.one_of(st.none(), st.text(max_size=40)))
def test_parse_fuzz(record: Any, when: Optional[str]) -> None:
    line = parse(record, when, min_level="trace", max_body=100)
    if line is not None:
        assert line.level in SEVERITY and isinstance(line.body, str) and len(line.body) <= 100
        assert line.request_id is None or isinstance(line.request_id, str)
        assert all(isinstance(v, (str, int, float, bool)) for v in line.attributes.values())
        assert isinstance(line.timestamp, float) and line.timestamp > 0
        item = log_item([line], LogContext(), lambda _rid: TRACE)  # whatever parse returns serializes validly
        assert log_item_problems(item.headers, item.payload) == []


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2200, 1, 1)),
       st.sampled_from(["T", " "]), st.sampled_from(["", ".", ","]), st.integers(0, 6),
       st.sampled_from(["Z", "", "+00:00", "+02:00", "-0530", "+1400"]))
def test_iso_to_epoch_matches_datetime(moment: datetime.datetime, sep: str, dot: str, digits: int, zone: str) -> None:
    fraction = (dot + ("%06d" % moment.microsecond)[:digits]) if dot and digits else ""
    text = moment.strftime("%Y-%m-%d") + sep + moment.strftime("%H:%M:%S") + fraction + zone
    offset = datetime.timedelta(0) if zone in ("Z", "") else datetime.timedelta(
        hours=int(zone[1:3]), minutes=int(zone[-2:])) * (1 if zone[0] == "+" else -1)
    micro = int(("%06d" % moment.microsecond)[:digits].ljust(6, "0")) if fraction else 0
    expected = moment.replace(microsecond=micro, tzinfo=datetime.timezone(offset)).timestamp()
    assert iso_to_epoch(text) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------ batch


def line_of(body: str, request_id: Optional[str] = REQ) -> LogLine:
    line = parse("[INFO]\t2026-11-28T06:32:55.124Z\t%s\t%s" % (request_id or "", body), EVENT_TIME)
    assert line is not None
    return line


def test_batch_overflow_by_count_drops_oldest() -> None:
    batch = LogBatch(max_items=3)
    lines = [line_of("line %d" % i) for i in range(5)]
    for line in lines:
        batch.add(line)
    assert len(batch) == 3
    dropped_bytes = sum(line.size + LINE_OVERHEAD for line in lines[:2])
    assert batch.take_dropped() == [(DROP_REASON, "log_item", 2), (DROP_REASON, "log_byte", dropped_bytes)]
    assert batch.take_dropped() == []
    assert [line.body for line in batch.take()] == ["line 2", "line 3", "line 4"]
    assert len(batch) == 0 and batch.bytes == 0


def test_batch_overflow_by_bytes_and_oversized_line() -> None:
    batch = LogBatch(max_items=1000, max_bytes=3 * (LINE_OVERHEAD + 100))
    for i in range(4):
        batch.add(line_of("%03d" % i + "b" * 60, request_id=None))  # 64 bytes + overhead each
    assert len(batch) == 3 and batch.bytes <= batch.max_bytes
    assert [(r, c, q) for r, c, q in batch.take_dropped() if c == "log_item"] == [(DROP_REASON, "log_item", 1)]
    huge = line_of("h" * (4 * LINE_OVERHEAD))
    batch.add(huge)  # bigger than the whole batch: it goes, the others stay
    assert len(batch) == 3
    assert batch.take_dropped() == [(DROP_REASON, "log_item", 1), (DROP_REASON, "log_byte", huge.size + LINE_OVERHEAD)]


def test_batch_take_in_chunks_of_100() -> None:
    batch = LogBatch()
    for i in range(250):
        batch.add(line_of(str(i)))
    chunks = [batch.take(), batch.take(), batch.take(), batch.take()]
    assert [len(c) for c in chunks] == [100, 100, 50, 0]
    assert [line.body for chunk in chunks for line in chunk] == [str(i) for i in range(250)]
    assert batch.bytes == 0 and batch.take(max_items=-1) == []


def test_batch_concurrent_adds_conserve_every_line() -> None:
    batch = LogBatch(max_items=500)
    taken: List[LogLine] = []
    line = line_of("x")
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            taken.extend(batch.take())
        taken.extend(batch.take(max_items=10_000))

    def produce() -> None:
        for _ in range(2000):
            batch.add(line)

    drainer = threading.Thread(target=drain)
    producers = [threading.Thread(target=produce) for _ in range(4)]
    drainer.start()
    for t in producers:
        t.start()
    for t in producers:
        t.join(30)
    stop.set()
    drainer.join(30)
    dropped = dict((c, q) for _r, c, q in batch.take_dropped())
    assert len(taken) + dropped.get("log_item", 0) == 8000
    assert batch.bytes == 0 and len(batch) == 0


def test_batch_drops_become_client_report_outcomes() -> None:
    batch = LogBatch(max_items=1)
    batch.add(line_of("a"))
    batch.add(line_of("b"))
    outcomes = Discards(clock=lambda: 1_800_000_000.0)
    for reason, category, quantity in batch.take_dropped():
        outcomes.record("key", reason, category, quantity)
    report = json.loads(outcomes.take_report("key") or b"{}")
    counts = {(e["reason"], e["category"]): e["quantity"] for e in report["discarded_events"]}
    assert counts == {("queue_overflow", "log_item"): 1, ("queue_overflow", "log_byte"): line_of("a").size + LINE_OVERHEAD}


# ------------------------------------------------------------------------------ envelope item


CONTEXT = LogContext(function_name="checkout", function_version="$LATEST", region="eu-west-1",
                     release="checkout@1.2.3", environment="production")


def mixed_lines() -> List[LogLine]:
    records: List[Any] = [ric_text(logging.INFO, "started")[0], "plain print", ric_text(logging.ERROR, "bad", exc=True)[0],
                          "2026-11-28T06:32:55.457Z\t%s\tWARN\tslow" % REQ,
                          ric_json(logging.WARNING, "json", order_id=7, ratio=0.25, ok=False, **{"faas.name": "spoof"}),
                          "naïve ☃ \ud800 lone surrogate"]
    lines = [parse(r, EVENT_TIME) for r in records]
    assert all(lines)
    return lines  # type: ignore[return-value]


def test_log_item_shape_is_valid_and_round_trips() -> None:
    lines = mixed_lines()
    item = log_item(lines, CONTEXT, lambda rid: TRACE if rid == REQ else "0" * 31 + "1")
    data = Envelope({"sent_at": "2026-11-28T06:32:56.000Z"}, [item]).serialize()
    parsed = parse_envelope(data)  # the fake upstream's independent parser
    (header, payload), = parsed.items
    assert header == {"type": "log", "item_count": len(lines), "content_type": CONTENT_TYPE, "length": len(payload)}
    assert log_item_problems(header, payload) == []
    logs = json.loads(payload)["items"]
    assert [log["level"] for log in logs] == ["info", "info", "error", "warn", "warn", "info"]
    assert [log["trace_id"] for log in logs] == [TRACE, "0" * 31 + "1", TRACE, TRACE, TRACE, "0" * 31 + "1"]
    assert logs[2]["body"].startswith("bad\nTraceback")
    assert logs[5]["body"] == "naïve ☃ ? lone surrogate"
    first = logs[0]
    assert first["timestamp"] == lines[0].timestamp and first["severity_number"] == 9
    attrs = {k: (v["value"], v["type"]) for k, v in first["attributes"].items()}
    assert attrs == {
        "sentry.origin": (ORIGIN, "string"), "sentry.sdk.name": ("sentry.lambda.extension", "string"),
        "sentry.sdk.version": (attrs["sentry.sdk.version"][0], "string"),
        "cloud.provider": ("aws", "string"), "cloud.platform": ("aws_lambda", "string"),
        "faas.name": ("checkout", "string"), "faas.version": ("$LATEST", "string"), "cloud.region": ("eu-west-1", "string"),
        "sentry.release": ("checkout@1.2.3", "string"), "sentry.environment": ("production", "string"),
        "sentry.severity_number": (9, "integer"), "sentry.severity_text": ("info", "string"),
        "faas.invocation_id": (REQ, "string"),
    }
    assert "faas.invocation_id" not in logs[1]["attributes"]  # a print line has no request id
    json_attrs = {k: (v["value"], v["type"]) for k, v in logs[4]["attributes"].items()}
    assert json_attrs["order_id"] == (7, "integer") and json_attrs["ratio"] == (0.25, "double")
    assert json_attrs["ok"] == (False, "boolean") and json_attrs["logger.name"] == ("app", "string")
    assert json_attrs["faas.name"] == ("checkout", "string")  # a record cannot override the context


@pytest.mark.parametrize("count", [1, 9, 10, 11, MAX_LOGS_PER_ITEM])
def test_log_envelope_is_the_gzip_of_the_log_item_envelope(count: int) -> None:
    """What the router sends: byte for byte the envelope of ``log_item``, as one gzip member
    (compressed ten logs at a time, so counts around that step are checked)."""
    lines = (mixed_lines() * 20)[:count]
    def trace_of(rid: Optional[str]) -> str:
        return TRACE if rid == REQ else "0" * 31 + "1"

    headers = {"sent_at": "2026-11-28T06:32:56Z"}
    body = log_envelope(lines, CONTEXT, trace_of, headers)
    assert body[:3] == b"\x1f\x8b\x08"  # a gzip member (deflate)
    member = zlib.decompressobj(31)
    plain = member.decompress(body)
    assert member.eof and member.unused_data == b""  # one whole member, nothing after it
    assert plain == Envelope(headers, [log_item(lines, CONTEXT, trace_of)]).serialize()
    (header, payload), = parse_envelope(plain).items
    assert log_item_problems(header, payload) == [] and header["item_count"] == count
    if count == MAX_LOGS_PER_ITEM:  # every log repeats its attributes: gzip takes most of it away
        assert len(body) * 10 < len(plain)
    with pytest.raises(ValueError):
        log_envelope(lines + [line_of("x")] * (MAX_LOGS_PER_ITEM + 1 - count), CONTEXT, trace_of, headers)


def test_log_json_reuses_a_requests_attributes_within_a_bound() -> None:
    """The JSON after a body is kept per (level, request id) and reused; a line with attributes of
    its own is never served a kept one; more request ids than the bound are still right."""
    context = LogContext("checkout")
    first, second = line_of("one"), line_of("two")
    own = first._replace(attributes={"order_id": 7})
    logs = [json.loads(context.log_json(line, TRACE)) for line in (first, own, second)]
    assert [log["body"] for log in logs] == ["one", "one", "two"]
    assert logs[0]["attributes"] == logs[2]["attributes"] and "order_id" not in logs[2]["attributes"]
    assert logs[1]["attributes"]["order_id"] == {"value": 7, "type": "integer"}
    for index in range(MAX_CACHED_TAILS + 5):
        rid = "req-%d" % index
        log = json.loads(context.log_json(line_of("x", request_id=rid)._replace(level="warn"), TRACE))
        assert log["attributes"]["faas.invocation_id"]["value"] == rid and log["severity_number"] == 13
        assert log["attributes"]["sentry.severity_text"]["value"] == "warn" and log["level"] == "warn"
    assert len(context._tails) <= MAX_CACHED_TAILS  # noqa: SLF001 (bounded)


def test_log_item_context_without_optional_attributes() -> None:
    item = log_item([line_of("x", request_id=None)], LogContext(), lambda _rid: TRACE)
    attrs = json.loads(item.payload)["items"][0]["attributes"]
    assert set(attrs) == {"sentry.origin", "sentry.sdk.name", "sentry.sdk.version", "cloud.provider", "cloud.platform",
                          "sentry.severity_number", "sentry.severity_text"}


def test_log_item_limits_and_bad_trace_ids() -> None:
    lines = [line_of(str(i), request_id="r%d" % (i % 3)) for i in range(MAX_LOGS_PER_ITEM)]
    asked: List[Optional[str]] = []

    def trace_of(rid: Optional[str]) -> str:
        asked.append(rid)
        return "not-a-trace-id"

    item = log_item(lines, CONTEXT, trace_of)
    logs = json.loads(item.payload)["items"]
    assert len(logs) == MAX_LOGS_PER_ITEM and sorted(asked) == ["r0", "r1", "r2"]  # asked once per request id
    assert len({log["trace_id"] for log in logs}) == 1 and valid_trace_id(logs[0]["trace_id"])
    assert log_item_problems(item.headers, item.payload) == []
    with pytest.raises(ValueError):
        log_item(lines + [line_of("one too many")], CONTEXT, lambda _rid: TRACE)


def test_log_item_counts_as_sentry_python_counts_a_lost_log_item() -> None:
    item = log_item(mixed_lines(), CONTEXT, lambda _rid: TRACE)
    assert item.data_category == "log_item"
    assert item_outcomes(item) == [("log_item", 6), ("log_byte", len(item.payload))]


SDK_LOGS = """
import logging, sys
import sentry_sdk
import sentry_sdk.logger
from sentry_sdk.transport import Transport
class Capture(Transport):
    def capture_envelope(self, envelope):
        sys.stdout.buffer.write(envelope.serialize())
sentry_sdk.init(dsn="https://abc@o1.ingest.sentry.io/1", transport=Capture, enable_logs=True,
                release="r", environment="e", default_integrations=False)
sentry_sdk.logger.warning("from the sdk {n}", n=3)
sentry_sdk.flush()
"""


def test_log_item_matches_what_sentry_python_sends() -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() != "sentry_dsn"}
    proc = subprocess.run([sys.executable, "-c", SDK_LOGS], capture_output=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    sdk_items = [(h, p) for h, p in parse_envelope(proc.stdout).items if h.get("type") == "log"]
    assert len(sdk_items) == 1
    sdk_header, sdk_payload = sdk_items[0]
    assert log_item_problems(sdk_header, sdk_payload) == []  # the validator accepts the real thing
    ours = log_item([line_of("x")], CONTEXT, lambda _rid: TRACE)
    sdk, mine = json.loads(sdk_payload), json.loads(ours.payload)
    assert sdk_header["content_type"] == ours.headers["content_type"] and sdk_header["item_count"] == 1
    assert set(sdk) == set(mine)  # {"version", "items"}
    sdk_log, my_log = sdk["items"][0], mine["items"][0]
    assert set(sdk_log) <= set(my_log) <= set(sdk_log) | {"severity_number"}
    for key in ("sentry.severity_number", "sentry.severity_text", "sentry.release", "sentry.environment"):
        assert set(sdk_log["attributes"][key]) == set(my_log["attributes"][key]) == {"value", "type"}
        assert sdk_log["attributes"][key]["type"] == my_log["attributes"][key]["type"]


def test_log_item_survives_a_failing_trace_lookup_and_bad_timestamps() -> None:
    def broken(_rid: Optional[str]) -> str:
        raise KeyError("no trace")

    odd = line_of("x")._replace(timestamp=float("nan"))
    item = log_item([line_of("a"), odd], CONTEXT, broken)
    assert log_item_problems(item.headers, item.payload) == []
    logs = json.loads(item.payload)["items"]
    assert logs[0]["trace_id"] == logs[1]["trace_id"] and abs(logs[1]["timestamp"] - time.time()) < 60
