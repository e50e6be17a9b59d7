"""A ``Failure`` (invocations.py) as a Sentry error event, and that event as an envelope request
authenticated with the DSN's key, for the queue like any SDK request (so mirrored rate limits
apply to it and its loss counts in client reports)."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

from .. import __version__
from ..protocol.client_reports import envelope_request
from ..config import Config
from ..util.ids import random_hex, uuid4_hex
from .failures import Failure
from ..delivery.request import Request

SDK = {"name": "sentry.lambda.extension", "version": __version__}
MECHANISM = "aws_lambda_extension"
EXCEPTION_TYPES = {"timeout": "LambdaTimeout", "oom": "LambdaOutOfMemory", "exit": "LambdaRuntimeExit",
                   "init": "LambdaInitError"}
TRACE_STATUS = {"timeout": "deadline_exceeded", "oom": "resource_exhausted", "exit": "internal_error",
                "init": "internal_error"}


def describe(failure: Failure, cfg: Config) -> str:
    """The exception value: what happened, with the facts Lambda gave."""
    seconds = "" if failure.duration_ms is None else " after %.2f s" % (failure.duration_ms / 1000.0)
    report = failure.report
    if failure.kind == "timeout":
        return "Task timed out%s" % seconds
    if failure.kind == "oom":
        size = (report.memory_size_mb if report is not None and report.memory_size_mb else None) or cfg.memory_mb
        used = report.max_memory_used_mb if report is not None else None
        if used is not None and size:
            return "Out of memory: %d of %d MB used" % (used, size)
        return "Out of memory: the runtime was killed at the %d MB limit" % size if size else "Out of memory"
    if failure.kind == "exit":
        return "The runtime exited (%s)%s" % (failure.error_type or "no errorType", seconds)
    return "Init failed: %s (status %s)%s" % (failure.error_type or "no errorType", failure.status, seconds)


def build_event(failure: Failure, cfg: Config, now: Optional[float] = None) -> Dict[str, Any]:
    """The Sentry event for ``failure`` (level fatal, unhandled, one issue per function and kind)."""
    now = time.time() if now is None else now
    function = cfg.function_name or "unknown-function"
    context: Dict[str, Any] = {
        "function_name": function, "function_version": cfg.function_version or None, "region": cfg.region or None,
        "memory_size_mb": cfg.memory_mb or None, "request_id": failure.request_id,
        "cold_start": failure.cold_start, "status": failure.status, "error_type": failure.error_type,
        "xray_trace_id": failure.xray,
    }
    tags = {"aws_lambda.function_name": function, "aws_lambda.failure": failure.kind,
            "aws_lambda.cold_start": "true" if failure.cold_start else "false", "aws_lambda.status": failure.status}
    for tag, value in (("aws_lambda.function_version", cfg.function_version), ("aws_lambda.region", cfg.region),
                       ("aws_lambda.memory_mb", str(cfg.memory_mb) if cfg.memory_mb else ""),
                       ("aws_lambda.request_id", failure.request_id), ("aws_lambda.error_type", failure.error_type)):
        if value:
            tags[tag] = value[:200]
    contexts: Dict[str, Any] = {"aws_lambda": {k: v for k, v in context.items() if v is not None}}
    metrics = _metrics(failure)
    if metrics:
        contexts["aws_lambda_report"] = metrics
    trace_id = failure.sdk_trace.get("trace_id")
    if trace_id:
        contexts["trace"] = {"trace_id": trace_id, "span_id": random_hex(8), "op": "function.aws",
                             "status": TRACE_STATUS[failure.kind]}
    elif failure.xray:
        tags["xray_trace_id"] = _xray_root(failure.xray)[:200]
    event: Dict[str, Any] = {
        "event_id": uuid4_hex(),
        "timestamp": now,
        "platform": "other",
        "level": "fatal",
        "logger": "sentry-lambda-extension",
        "transaction": function,
        "exception": {"values": [{"type": EXCEPTION_TYPES[failure.kind], "value": describe(failure, cfg),
                                  "mechanism": {"type": MECHANISM, "handled": False}}]},
        "tags": tags,
        "contexts": contexts,
        "fingerprint": ["aws-lambda-extension", function, failure.kind],
        "sdk": SDK,
    }
    release = failure.sdk_trace.get("release") or cfg.release
    environment = failure.sdk_trace.get("environment") or cfg.environment
    if release:
        event["release"] = release
    if environment:
        event["environment"] = environment
    crumbs = _breadcrumbs(failure, now)
    if crumbs:
        event["breadcrumbs"] = {"values": crumbs}
    return event


def build_request(failure: Failure, cfg: Config, now: Optional[float] = None) -> Request:
    """The event as an envelope request for the queue (with the DSC when the SDK had a trace)."""
    assert cfg.dsn is not None
    event = build_event(failure, cfg, now)
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header: Dict[str, Any] = {"event_id": event["event_id"],
                              "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    trace_id = failure.sdk_trace.get("trace_id")
    if trace_id:
        dsc = {"trace_id": trace_id, "public_key": cfg.dsn.public_key}
        for name in ("release", "environment"):
            if event.get(name):
                dsc[name] = event[name]
        header["trace"] = dsc
    item = json.dumps({"type": "event", "length": len(payload)}, separators=(",", ":")).encode("ascii")
    body = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + item + b"\n" + payload + b"\n"
    req = envelope_request(cfg.dsn, cfg.dsn.public_key, body)
    req.event_id = event["event_id"]
    return req


def _metrics(failure: Failure) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    report, done, init = failure.report, failure.runtime_done, failure.init_report
    if report is not None:
        for name in ("duration_ms", "billed_duration_ms", "memory_size_mb", "max_memory_used_mb",
                     "init_duration_ms", "restore_duration_ms"):
            value = getattr(report, name)
            if value is not None:
                out[name] = value
    if done is not None and done.duration_ms is not None:
        out["runtime_duration_ms"] = done.duration_ms
    if init is not None:
        if init.duration_ms is not None:
            out["init_duration_ms"] = init.duration_ms
        if init.phase:
            out["init_phase"] = init.phase
    return out


def _xray_root(value: str) -> str:
    for part in value.split(";"):
        if part.strip().startswith("Root="):
            return part.strip()[5:]
    return value


BREADCRUMB_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "error": "error",
                     "fatal": "fatal"}


def _breadcrumbs(failure: Failure, now: float) -> List[Dict[str, Any]]:
    return [{"timestamp": stamp or now, "type": "default", "category": "console",
             "level": BREADCRUMB_LEVELS.get(level, "info"), "message": body}
            for stamp, level, body in failure.log_lines]
