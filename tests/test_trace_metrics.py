"""Lambda's report figures as Sentry trace metrics: sentry_ext.insight.metrics builds them, batches
them (one envelope per flush) and the pipeline sends them through its rate limits and client
reports; the categories are Relay's own."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import pytest
from sentry_relay.consts import DataCategory

from helpers import KEY, StartPipeline, wait_until
from sentry_ext.awslambda.telemetry_records import Report, parse_batch
from sentry_ext.config import load
from sentry_ext.delivery.request import Request
from sentry_ext.insight.metrics import CONTENT_TYPE, MAX_AGE_S, ReportMetrics, estimated_cost
from sentry_ext.protocol.body import decode_body
from sentry_ext.protocol.envelope import Envelope, category
from tools.fake_upstream import FakeUpstream

DSN = "https://%s@o1.ingest.sentry.io/42" % KEY
TRACE = "771a43a4192642f0b136d5159a501700"
ENV = {"SENTRY_DSN": DSN, "AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "7",
       "AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024", "SENTRY_EXT_ARCHITECTURE": "arm64"}


def report(rid: str, **extra: Any) -> Dict[str, Any]:
    metrics = {"durationMs": 99.5, "billedDurationMs": 100, "memorySizeMB": 1024, "maxMemoryUsedMB": 80}
    metrics.update(extra)
    return {"time": "2026-11-28T06:32:50.250Z", "type": "platform.report",
            "record": {"requestId": rid, "status": "success", "metrics": metrics,
                       "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-5759e988-bd862e3fe1be46a994272793"}}}


def parsed(*items: Dict[str, Any]) -> List[Report]:
    return [r for r in parse_batch(list(items)) if isinstance(r, Report)]


class Sink:
    def __init__(self) -> None:
        self.requests: List[Request] = []

    def __call__(self, req: Request) -> bool:
        self.requests.append(req)
        return True

    def envelopes(self) -> List[Envelope]:
        return [Envelope.parse(decode_body(r.body, r.encoding, 1 << 24)) for r in self.requests]


def test_a_cold_reports_figures_with_their_attributes() -> None:
    cfg = load(ENV)
    metrics = ReportMetrics(cfg, Sink(), lambda rid: {"trace_id": TRACE, "release": "r@1"} if rid == "a" else {})
    (cold,) = parsed(report("a", initDurationMs=250.0))
    items = {i["name"]: i for i in metrics.items(cold)}
    assert set(items) == {"aws.lambda.duration", "aws.lambda.billed_duration", "aws.lambda.max_memory_used",
                          "aws.lambda.init_duration", "aws.lambda.estimated_cost"}
    assert (items["aws.lambda.duration"]["value"], items["aws.lambda.duration"]["unit"]) == (99.5, "millisecond")
    assert items["aws.lambda.max_memory_used"]["unit"] == "megabyte"
    assert items["aws.lambda.init_duration"]["value"] == 250.0
    assert items["aws.lambda.estimated_cost"]["value"] == pytest.approx(0.0000002 + 0.1 * 1.0 * 0.0000133334)
    assert items["aws.lambda.estimated_cost"]["type"] == "counter"
    for item in items.values():
        assert item["trace_id"] == TRACE and item["timestamp"] == pytest.approx(1795847570.25)
        attrs = {k: v["value"] for k, v in item["attributes"].items()}
        assert attrs == {"aws_lambda.function_name": "fn", "aws_lambda.function_version": "7",
                         "aws_lambda.region": "eu-west-1", "aws_lambda.request_id": "a",
                         "aws_lambda.cold_start": True, "aws_lambda.architecture": "arm64",
                         "aws_lambda.memory_size_mb": 1024, "sentry.release": "r@1",
                         "sentry.sdk.name": "sentry.lambda.extension",
                         "sentry.sdk.version": item["attributes"]["sentry.sdk.version"]["value"]}
        assert item["attributes"]["aws_lambda.memory_size_mb"]["type"] == "integer"
    (warm,) = parsed(report("b", restoreDurationMs=40.0))
    names = {i["name"] for i in metrics.items(warm)}
    assert "aws.lambda.restore_duration" in names and "aws.lambda.init_duration" not in names
    assert metrics.items(warm)[0]["trace_id"] == "5759e988bd862e3fe1be46a994272793"  # no SDK trace: X-Ray's


def test_cost_by_architecture_and_none_on_managed_instances() -> None:
    assert estimated_cost(1000, 1024, "x86_64") == pytest.approx(0.0000002 + 0.0000166667)
    assert estimated_cost(1000, 512, "arm64") == pytest.approx(0.0000002 + 0.0000133334 / 2)
    cfg = load(dict(ENV, AWS_LAMBDA_INITIALIZATION_TYPE="lambda-managed-instances"))
    (one,) = parsed(report("a"))
    assert "aws.lambda.estimated_cost" not in {i["name"] for i in ReportMetrics(cfg, Sink(), lambda rid: {}).items(one)}


def test_figures_are_batched_one_envelope_per_flush_and_bounded() -> None:
    sink = Sink()
    metrics = ReportMetrics(load(ENV), sink, lambda rid: {}, max_items=10)
    metrics.feed(parse_batch([report("a"), report("b")]))  # 4 figures each
    assert sink.requests == [] and len(metrics) == 8
    metrics.feed(parse_batch([report("c")]))  # would not fit: the batch leaves, c's figures wait
    assert len(sink.requests) == 1 and len(metrics) == 4
    assert metrics.flush() and not metrics.flush()  # nothing pending: no empty envelope
    first, second = sink.envelopes()
    for envelope, count in ((first, 8), (second, 4)):
        (item,) = envelope.items
        assert item.headers == {"type": "trace_metric", "item_count": count, "content_type": CONTENT_TYPE,
                                "length": len(item.payload)}
        payload = json.loads(item.payload)
        assert payload["version"] == 2 and len(payload["items"]) == count
    assert sink.requests[0].headers["content-encoding"] == "gzip"


def test_an_old_batch_leaves_with_the_next_report() -> None:
    sink = Sink()
    clock = [100.0]
    metrics = ReportMetrics(load(ENV), sink, lambda rid: {}, clock=lambda: clock[0])
    metrics.feed(parse_batch([report("a")]))
    clock[0] += MAX_AGE_S - 1
    metrics.feed(parse_batch([report("b")]))
    assert not sink.requests and len(metrics) > 0  # not yet: one request per many invocations
    clock[0] += 1.0
    metrics.feed(parse_batch([report("c")]))
    assert len(sink.requests) == 1 and len(metrics) == 0


def test_relay_knows_the_categories() -> None:
    assert category("trace_metric") == "trace_metric"
    for name in ("trace_metric", "trace_metric_byte", "transaction", "span"):
        assert DataCategory.parse(name) is not None and DataCategory.parse(name).name.lower() == name


def test_a_rate_limited_batch_is_dropped_and_reported_in_its_own_categories(
        pipelines: StartPipeline, upstream: FakeUpstream) -> None:
    pipe = pipelines(SENTRY_EXT_METRICS="on")
    pipe.limits.update(KEY, 200, {"X-Sentry-Rate-Limits": "60:trace_metric:project"})
    pipe.on_telemetry([report("a"), report("b")])
    pipe.metrics.flush()  # as at SHUTDOWN (a drain leaves the batch to grow)
    assert pipe.flush(5.0)
    assert wait_until(lambda: upstream.items("client_report"), 5)
    (report_item,) = [json.loads(p) for _, _, p in upstream.items("client_report")]
    discarded = {(d["reason"], d["category"]): d["quantity"] for d in report_item["discarded_events"]}
    assert discarded[("ratelimit_backoff", "trace_metric")] == 8  # 4 figures a report
    assert discarded[("ratelimit_backoff", "trace_metric_byte")] > 0
    assert upstream.items("trace_metric") == []


def test_metrics_off_builds_nothing(pipelines: StartPipeline, upstream: FakeUpstream) -> None:
    pipe = pipelines(SENTRY_EXT_METRICS="off", SENTRY_EXT_UNFINISHED_TRANSACTIONS="off")
    assert pipe.metrics is None and pipe.unfinished is None
    pipe.on_telemetry([report("a")])
    assert pipe.flush(5.0) and upstream.requests == []


def test_metrics_reach_the_upstream(pipelines: StartPipeline, upstream: FakeUpstream) -> None:
    pipe = pipelines()
    pipe.on_telemetry([report("a", initDurationMs=300.0)])
    assert pipe.flush(5.0) and upstream.items("trace_metric") == []  # a drain leaves the batch to grow
    pipe.metrics.flush()  # as at SHUTDOWN
    start = time.monotonic()
    assert pipe.flush(5.0) and time.monotonic() - start < 5.0
    (_, header, payload) = upstream.items("trace_metric")[0]
    assert header["item_count"] == 5 and header["content_type"] == CONTENT_TYPE
    assert {i["name"] for i in json.loads(payload)["items"]} >= {"aws.lambda.duration", "aws.lambda.init_duration"}
