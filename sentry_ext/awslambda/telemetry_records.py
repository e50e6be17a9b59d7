"""Telemetry API batches in, typed and validated records out (pure: no I/O, no state, never raises).

A batch is what Lambda POSTs to the listener: a JSON list of ``{"time", "type", "record"}``
(schema 2022-12-13 and later). Every field is checked before anything can act on it: types,
sizes, request ids (short, plain characters), statuses, numbers (finite, non-negative). A record
that fails a check is left out; unknown types and unknown fields are ignored, so newer schemas
keep working. ``platform.*`` records become the classes below; ``function`` and ``extension``
records become ``FunctionLog`` with the raw line (a string, or an object in Lambda's JSON log
format) for the log parser to read.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Union

from ..util.records import FrozenRecord

MAX_RECORDS = 10000  # Lambda's largest buffering.maxItems: more in one batch is not Lambda
MAX_LOG_CHARS = 262144  # Lambda cuts a function log record at 256 KiB
MAX_TEXT = 256  # error types, phases, versions, tracing values
STATUSES = frozenset({"success", "error", "failure", "timeout"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}\Z")
_TEXT = re.compile(r"[\x20-\x7e]{1,%d}\Z" % MAX_TEXT)  # printable ASCII: error types, tracing headers


class Record(FrozenRecord):
    """Any parsed record: its ``type`` and ISO ``time`` as Lambda sent them (time may be "")."""

    __slots__ = ("type", "time")
    type: str
    time: str


class InitStart(Record):
    __slots__ = ("phase", "initialization_type", "function_name", "function_version")
    phase: Optional[str]  # "init", or "invoke" for an Init re-run inside an invocation
    initialization_type: Optional[str]
    function_name: Optional[str]
    function_version: Optional[str]


class InitRuntimeDone(Record):
    __slots__ = ("phase", "status", "error_type")
    phase: Optional[str]
    status: str
    error_type: Optional[str]


class InitReport(Record):
    __slots__ = ("phase", "status", "error_type", "duration_ms")
    phase: Optional[str]
    status: str
    error_type: Optional[str]
    duration_ms: Optional[float]


class Start(Record):
    __slots__ = ("request_id", "version", "tracing")
    request_id: str
    version: Optional[str]
    tracing: Optional[str]  # the X-Amzn-Trace-Id value


class RuntimeDone(Record):
    __slots__ = ("request_id", "status", "error_type", "duration_ms", "tracing")
    request_id: str
    status: str
    error_type: Optional[str]
    duration_ms: Optional[float]
    tracing: Optional[str]


class Report(Record):
    __slots__ = ("request_id", "status", "error_type", "duration_ms", "billed_duration_ms", "memory_size_mb",
                 "max_memory_used_mb", "init_duration_ms", "restore_duration_ms", "tracing")
    request_id: str
    status: str
    error_type: Optional[str]
    duration_ms: Optional[float]
    billed_duration_ms: Optional[float]
    memory_size_mb: Optional[float]
    max_memory_used_mb: Optional[float]
    init_duration_ms: Optional[float]
    restore_duration_ms: Optional[float]
    tracing: Optional[str]


class RestoreStart(Record):
    __slots__ = ()


class RestoreRuntimeDone(Record):
    __slots__ = ("status", "error_type")
    status: str
    error_type: Optional[str]


class RestoreReport(Record):
    __slots__ = ("status", "error_type", "duration_ms")
    status: str
    error_type: Optional[str]
    duration_ms: Optional[float]


class LogsDropped(Record):
    __slots__ = ("dropped_bytes", "dropped_records", "reason")
    dropped_bytes: Optional[float]
    dropped_records: Optional[float]
    reason: Optional[str]


class FunctionLog(Record):
    """A ``function`` or ``extension`` record: ``type`` says which; ``line`` is the raw record
    (text, capped at MAX_LOG_CHARS, or Lambda's JSON log object)."""

    __slots__ = ("line",)
    line: Union[str, Dict[str, Any]]


# -- field checks: each returns the clean value or None ----------------------------------------

def request_id(value: Any) -> Optional[str]:
    """A request id if ``value`` looks like one (1-64 plain characters), else None."""
    return value if isinstance(value, str) and _REQUEST_ID.match(value) else None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and _TEXT.match(value) else None


def _status(value: Any) -> Optional[str]:
    # Unknown but well-formed statuses pass (a newer schema); callers act only on known ones.
    return value if isinstance(value, str) and (value in STATUSES or re.match(r"[a-zA-Z]{1,32}\Z", value)) else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= 1e12 else None


def tracing_value(value: Any) -> Optional[str]:
    """The X-Amzn-Trace-Id value of a ``tracing`` object (records, INVOKE events), if sane."""
    return _text(value.get("value")) if isinstance(value, dict) else None


def _metrics(record: Dict[str, Any]) -> Dict[str, Any]:
    metrics = record.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


# -- one parser per record type ----------------------------------------------------------------

def _init_start(t: str, time: str, r: Dict[str, Any]) -> Record:
    return InitStart(t, time, _text(r.get("phase")), _text(r.get("initializationType")),
                     _text(r.get("functionName")), _text(r.get("functionVersion")))


def _init_runtime_done(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    status = _status(r.get("status"))
    return None if status is None else InitRuntimeDone(t, time, _text(r.get("phase")), status,
                                                       _text(r.get("errorType")))


def _init_report(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    status = _status(r.get("status"))
    return None if status is None else InitReport(t, time, _text(r.get("phase")), status,
                                                  _text(r.get("errorType")), _number(_metrics(r).get("durationMs")))


def _start(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    rid = request_id(r.get("requestId"))
    return None if rid is None else Start(t, time, rid, _text(r.get("version")), tracing_value(r.get("tracing")))


def _runtime_done(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    rid, status = request_id(r.get("requestId")), _status(r.get("status"))
    if rid is None or status is None:
        return None
    return RuntimeDone(t, time, rid, status, _text(r.get("errorType")), _number(_metrics(r).get("durationMs")),
                       tracing_value(r.get("tracing")))


def _report(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    rid, status = request_id(r.get("requestId")), _status(r.get("status"))
    if rid is None or status is None:
        return None
    m = _metrics(r)
    return Report(t, time, rid, status, _text(r.get("errorType")), _number(m.get("durationMs")),
                  _number(m.get("billedDurationMs")), _number(m.get("memorySizeMB")),
                  _number(m.get("maxMemoryUsedMB")), _number(m.get("initDurationMs")),
                  _number(m.get("restoreDurationMs")), tracing_value(r.get("tracing")))


def _restore_start(t: str, time: str, r: Dict[str, Any]) -> Record:
    return RestoreStart(t, time)


def _restore_runtime_done(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    status = _status(r.get("status"))
    return None if status is None else RestoreRuntimeDone(t, time, status, _text(r.get("errorType")))


def _restore_report(t: str, time: str, r: Dict[str, Any]) -> Optional[Record]:
    status = _status(r.get("status"))
    return None if status is None else RestoreReport(t, time, status, _text(r.get("errorType")),
                                                     _number(_metrics(r).get("durationMs")))


def _logs_dropped(t: str, time: str, r: Dict[str, Any]) -> Record:
    return LogsDropped(t, time, _number(r.get("droppedBytes")), _number(r.get("droppedRecords")),
                       _text(r.get("reason")))


PLATFORM = {
    "platform.initStart": _init_start,
    "platform.initRuntimeDone": _init_runtime_done,
    "platform.initReport": _init_report,
    "platform.start": _start,
    "platform.runtimeDone": _runtime_done,
    "platform.report": _report,
    "platform.restoreStart": _restore_start,
    "platform.restoreRuntimeDone": _restore_runtime_done,
    "platform.restoreReport": _restore_report,
    "platform.logsDropped": _logs_dropped,
}
# Log record types, each to one shared string: a batch's records then do not each keep the
# decoder's copy ("function" x 1,000 is ~57 KB while the batch is handled).
LOG_TYPES = {"function": "function", "extension": "extension"}


def parse_record(item: Any) -> Optional[Record]:
    """One batch item as a typed record; None if it is unknown or fails a check."""
    if not isinstance(item, dict):
        return None
    rtype = item.get("type")
    time = item.get("time")
    time = time if isinstance(time, str) and len(time) <= 64 else ""
    record = item.get("record")
    log_type = LOG_TYPES.get(rtype) if isinstance(rtype, str) else None
    if log_type is not None:
        if isinstance(record, str):
            return FunctionLog(log_type, time, record[:MAX_LOG_CHARS])
        return FunctionLog(log_type, time, record) if isinstance(record, dict) else None
    parse = PLATFORM.get(rtype) if isinstance(rtype, str) else None
    if parse is None or not isinstance(record, dict):
        return None
    return parse(rtype, time, record)


def parse_batch(batch: Any) -> List[Record]:
    """Every valid record of a decoded batch, in order (at most MAX_RECORDS); never raises."""
    if not isinstance(batch, list):
        return []
    records: List[Record] = []
    for item in batch[:MAX_RECORDS]:
        try:
            parsed = parse_record(item)
        except Exception:  # a check missed some odd input: leave that record out
            parsed = None
        if parsed is not None:
            records.append(parsed)
    return records
