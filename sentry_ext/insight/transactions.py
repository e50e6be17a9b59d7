"""An ``Unfinished`` invocation (unfinished.py) as the Sentry transaction its SDK never sent, and
that transaction as an envelope request for the queue (mirrored rate limits apply to it; its loss
counts in client reports as ``transaction`` and ``span``).

It looks like the transaction sentry-python's ``AwsLambdaIntegration`` sends for the same
invocation (op ``function.aws``, name = the function, tag ``aws_region``, ``extra.lambda``), on
the SDK's trace when the SDK's envelopes carried one (the trace the failure event uses), made by
the extension's own ``sdk.name``: start from ``platform.start``, end from runtimeDone (or the
deadline), status ``deadline_exceeded`` for a timeout and ``internal_error`` otherwise.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Mapping, Optional

from ..config import Config
from ..delivery.request import Request
from ..protocol.client_reports import envelope_request
from ..util.ids import random_hex, uuid4_hex, valid_trace_id
from .failure_events import SDK
from .unfinished import Unfinished

OP = "function.aws"  # sentry-python's op for a Lambda invocation
ORIGIN = "auto.function.aws_lambda.extension"


def trace_id_for(sdk_trace: Mapping[str, str], xray: Optional[str]) -> str:
    """The trace to put a transaction (or a metric) on: the SDK's, else the X-Ray trace's root
    id as Sentry's 32 hex digits, else a new one."""
    trace_id = sdk_trace.get("trace_id")
    if valid_trace_id(trace_id):
        return trace_id  # type: ignore[return-value]
    if xray:
        for part in xray.split(";"):
            part = part.strip()
            if part.startswith("Root=1-"):
                candidate = part[7:].replace("-", "").lower()
                if valid_trace_id(candidate):
                    return candidate
    return uuid4_hex()


def status_of(item: Unfinished) -> str:
    """The transaction's (span) status."""
    return "deadline_exceeded" if item.deadline_hit else "internal_error"


def build_transaction(item: Unfinished, sdk_trace: Mapping[str, str], cfg: Config) -> Dict[str, Any]:
    """The transaction event for ``item``; ``sdk_trace`` is what the failure event uses
    (``Invocations.sdk_trace``: trace_id, release, environment)."""
    function = cfg.function_name or "unknown-function"
    status = status_of(item)
    lam: Dict[str, Any] = {"function_name": function, "aws_request_id": item.request_id,
                           "execution_duration_in_millis": int((item.end - item.start) * 1000)}
    if cfg.function_version:
        lam["function_version"] = cfg.function_version
    context: Dict[str, Any] = {"function_name": function, "request_id": item.request_id, "cold_start": item.cold_start,
                               "status": item.status, "failure": item.kind}
    for key, value in (("function_version", cfg.function_version), ("region", cfg.region),
                       ("memory_size_mb", cfg.memory_mb), ("error_type", item.error_type), ("xray_trace_id", item.xray)):
        if value:
            context[key] = value
    tags = {"aws_lambda.function_name": function[:200], "aws_lambda.request_id": item.request_id,
            "aws_lambda.failure": item.kind, "aws_lambda.cold_start": "true" if item.cold_start else "false"}
    if cfg.region:
        tags["aws_region"] = cfg.region[:200]
    if item.error_type:
        tags["aws_lambda.error_type"] = item.error_type[:200]
    event: Dict[str, Any] = {
        "type": "transaction",
        "event_id": uuid4_hex(),
        "platform": "other",
        "transaction": function,
        "transaction_info": {"source": "component"},
        "start_timestamp": item.start,
        "timestamp": item.end,
        "contexts": {
            "trace": {"trace_id": trace_id_for(sdk_trace, item.xray), "span_id": random_hex(8), "op": OP,
                      "origin": ORIGIN, "status": status},
            "aws_lambda": context,
        },
        "tags": tags,
        "extra": {"lambda": lam},
        "spans": [],
        "sdk": SDK,
    }
    release = sdk_trace.get("release") or item.dsc.get("release") or cfg.release
    environment = sdk_trace.get("environment") or item.dsc.get("environment") or cfg.environment
    if release:
        event["release"] = release
    if environment:
        event["environment"] = environment
    return event


def build_request(item: Unfinished, sdk_trace: Mapping[str, str], cfg: Config) -> Request:
    """The transaction as an envelope request, its header carrying the dynamic sampling context."""
    assert cfg.dsn is not None
    event = build_transaction(item, sdk_trace, cfg)
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    trace_id = event["contexts"]["trace"]["trace_id"]
    dsc: Dict[str, Any] = {"trace_id": trace_id, "public_key": cfg.dsn.public_key,
                           "transaction": event["transaction"], "sampled": "true"}
    if item.dsc.get("trace_id") == trace_id and item.dsc.get("sample_rate"):
        dsc["sample_rate"] = item.dsc["sample_rate"]  # the SDK's rate: Sentry extrapolates from it
    for name in ("release", "environment"):
        if event.get(name):
            dsc[name] = event[name]
    header = {"event_id": event["event_id"], "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "trace": dsc}
    item_header = json.dumps({"type": "transaction", "length": len(payload)}, separators=(",", ":")).encode("ascii")
    body = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + item_header + b"\n" + payload + b"\n"
    req = envelope_request(cfg.dsn, cfg.dsn.public_key, body)
    req.event_id = event["event_id"]
    return req
