"""What counts as a failed invocation (the kinds the SDK cannot report: ``invocations`` says which
records decide each) and a ``Failure``: one such decision with the facts known about it."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..awslambda.telemetry_records import InitReport, Report, RuntimeDone

KINDS = ("timeout", "oom", "exit", "init")
TIMEOUT_TYPES = frozenset({"Sandbox.Timedout", "Sandbox.Timeout"})


class Failure:
    """One decision: what failed and the facts known about it (``request_id`` None for Init)."""

    def __init__(self, kind: str, request_id: Optional[str], status: str, error_type: Optional[str],
                 cold_start: bool, runtime_done: Optional[RuntimeDone] = None, report: Optional[Report] = None,
                 init_report: Optional[InitReport] = None, xray: Optional[str] = None,
                 sdk_trace: Optional[Dict[str, str]] = None,
                 log_lines: Tuple[Tuple[float, str, str], ...] = ()) -> None:
        self.kind = kind
        self.request_id = request_id
        self.status = status
        self.error_type = error_type
        self.cold_start = cold_start
        self.runtime_done = runtime_done
        self.report = report
        self.init_report = init_report
        self.xray = xray  # X-Amzn-Trace-Id value
        self.sdk_trace = sdk_trace or {}  # trace_id, release, environment from the SDK's envelope headers
        self.log_lines = log_lines  # (epoch time, level, body) of its last function log lines, oldest first

    @property
    def duration_ms(self) -> Optional[float]:
        for record in (self.runtime_done, self.report, self.init_report):
            if record is not None and record.duration_ms is not None:
                return record.duration_ms
        return None

    def __repr__(self) -> str:
        return "Failure(%s, %s, status=%s, errorType=%s)" % (self.kind, self.request_id, self.status, self.error_type)


def classify(status: Optional[str], error_type: Optional[str], report: Optional[Report] = None) -> Optional[str]:
    """The failure kind of an invocation's outcome, or None (success, or a handler error the SDK saw)."""
    if status is None or status == "success":
        return None
    if error_type == "Runtime.OutOfMemory":
        return "oom"
    kind = None
    if status == "timeout" or error_type in TIMEOUT_TYPES:
        kind = "timeout"
    elif error_type == "Runtime.ExitError":
        kind = "exit"
    if kind is not None and report is not None and report.memory_size_mb and report.max_memory_used_mb is not None \
            and report.max_memory_used_mb >= report.memory_size_mb:
        return "oom"
    return kind
