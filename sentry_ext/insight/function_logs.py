"""Telemetry API ``function`` records -> ``LogLine`` values (level, time, body, request id, attributes).

One record is one log, multi-line records (tracebacks) included. Formats understood:

- Python runtime, text: ``[LEVEL]\\t<ISO time>\\t<request id>\\t<message>``; an unhandled error is
  ``[ERROR] Type: msg\\nTraceback ...`` (no time, no request id);
- Node.js (and .NET) runtime, text: ``<ISO time>\\t<request id>\\t<LEVEL>\\t<message>``;
- anything else as plain text (``print``): level ``info``, no request id, the event's time;
- JSON log format: the record is an object with ``timestamp``, ``level``, ``message``, ``requestId``;
  other fields become attributes. A *string* record that is a JSON object (a structured-logging
  library printing JSON in text format, e.g. AWS Lambda Powertools) is read the same way when it
  has a ``message``, ``msg`` or ``level`` key and fits the body cap; other JSON text stays text.
  Only named levels are understood (numeric ones, as pino's, read as ``info``).

Lambda's own START/END/REPORT/INIT_*/RESTORE_*/EXTENSION/TELEMETRY lines and the extension's own
output are never logs: ``parse`` returns None for them. ``parse`` never raises.
"""

from __future__ import annotations

import json
import time as _time
from typing import Any, Dict, NamedTuple, Optional

# Sentry/OTel severity: the lowest number of each level's range.
SEVERITY: Dict[str, int] = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}

# Level names as runtimes and logging libraries spell them (upper-cased) -> Sentry level.
LEVEL_NAMES: Dict[str, str] = {
    "TRACE": "trace", "TRCE": "trace",
    "DEBUG": "debug", "DBUG": "debug",
    "INFO": "info", "INFORMATION": "info", "NOTICE": "info",
    "WARN": "warn", "WARNING": "warn",
    "ERROR": "error", "FAIL": "error", "ERR": "error",
    "CRITICAL": "fatal", "FATAL": "fatal", "CRIT": "fatal", "ALERT": "fatal", "EMERGENCY": "fatal",
}

MAX_BODY_CHARS = 16 * 1024  # body cap (characters); Relay takes up to 2 MiB per log, our batch is bounded
MAX_ATTRIBUTES = 32  # extra attributes kept per JSON record
MAX_ATTRIBUTE_CHARS = 4096  # cap of one string attribute value
MAX_KEY_CHARS = 128  # longer attribute names are dropped
TRUNCATED_ATTRIBUTE = "lambda.log.original_length"  # set (characters) when the body was cut

# Not function logs: Lambda platform lines (were they ever in the function stream) and our own.
SKIP_PREFIXES = (
    "START RequestId:", "END RequestId:", "REPORT RequestId:", "INIT_START ", "INIT_REPORT ",
    "RESTORE_START ", "RESTORE_REPORT ", "EXTENSION\t", "TELEMETRY\t", "LOGS\t", "XRAY TraceId:",
    "[sentry-lambda-extension]",
)

# JSON record keys with a meaning of their own (everything else becomes an attribute).
_TIME_KEYS = ("timestamp", "time")
_LEVEL_KEYS = ("level", "levelname", "severity")
_MESSAGE_KEYS = ("message", "msg")
_REQUEST_ID_KEYS = ("requestId", "AWSRequestId", "function_request_id", "aws_request_id")  # runtimes, Java, Powertools
# Renamed to semantic-convention attribute names.
_RENAMED = {
    "logger": "logger.name",
    "errorType": "exception.type",
    "errorMessage": "exception.message",
    "stackTrace": "exception.stacktrace",
    "tenantId": "faas.tenant_id",
}
_CONSUMED = frozenset(_TIME_KEYS + _LEVEL_KEYS + _MESSAGE_KEYS + _REQUEST_ID_KEYS)
_INT64 = 1 << 63

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode


class LogLine(NamedTuple):
    """One function log line, ready to batch; ``attributes`` hold str/int/float/bool values only."""

    timestamp: float  # epoch seconds
    level: str  # trace|debug|info|warn|error|fatal
    body: str
    request_id: Optional[str]
    attributes: Dict[str, Any]
    size: int  # approximate bytes of body, request id and attributes (the batch adds its overhead)


def level_of(name: Any) -> Optional[str]:
    """The Sentry level of a level name in any spelling (``WARNING``, ``warn``, ``crit``), or None."""
    return _level(name) if isinstance(name, str) else None


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------

_minute_cache: Dict[str, float] = {}  # "YYYY-MM-DDTHH:MM" -> epoch seconds; lines share minutes


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's algorithm: days since 1970-01-01 of a proleptic Gregorian date.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _minute_epoch(prefix: str) -> Optional[float]:
    cached = _minute_cache.get(prefix)
    if cached is not None:
        return cached
    if prefix[4] != "-" or prefix[7] != "-" or prefix[13] != ":" or prefix[10] not in "T t":
        return None
    try:
        y, mo, d, h, mi = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10]), int(prefix[11:13]), int(prefix[14:16])
    except ValueError:
        return None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59) or y < 1970:
        return None
    value = float(_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60)
    if len(_minute_cache) >= 256:
        _minute_cache.clear()
    _minute_cache[prefix] = value
    return value


def iso_to_epoch(text: Any) -> Optional[float]:
    """Epoch seconds of an ISO 8601 time (``T`` or space, optional fraction with ``.`` or ``,``,
    ``Z``/``±HH:MM``/``±HHMM``/none = UTC); None if it is not one."""
    if not isinstance(text, str) or len(text) < 19 or len(text) > 40:
        return None
    base = _minute_epoch(text[:16])
    if base is None or text[16] != ":":
        return None
    sec = text[17:19]
    if not sec.isdigit():
        return None
    value = base + int(sec)
    pos, end = 19, len(text)
    if pos < end and text[pos] in ".,":
        stop = pos + 1
        while stop < end and text[stop].isdigit():
            stop += 1
        if stop > pos + 1:
            value += float("0." + text[pos + 1:stop])
        pos = stop
    if pos < end:
        zone = text[pos:]
        if zone in ("Z", "z", "+00:00", "+0000"):
            return value
        sign = zone[0]
        digits = zone[1:].replace(":", "")
        if sign not in "+-" or len(digits) != 4 or not digits.isdigit():
            return None
        offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
        value = value - offset if sign == "+" else value + offset
    return value


def _epoch(value: Any) -> Optional[float]:
    """Epoch seconds of a JSON timestamp: ISO text or a number of seconds or milliseconds."""
    if isinstance(value, str):
        return iso_to_epoch(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and 0 < value < 1e14:
        return value / 1000.0 if value > 1e11 else float(value)
    return None


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _request_id(text: str) -> Optional[str]:
    if not text or text == "undefined" or len(text) > 128 or " " in text:
        return None
    return text


def _level(name: str) -> Optional[str]:
    level = LEVEL_NAMES.get(name)
    return level if level is not None else LEVEL_NAMES.get(name.upper())


def _attribute_value(value: Any) -> Any:
    """A str/int/float/bool attribute value; other JSON values as compact JSON text."""
    if isinstance(value, str):
        return value if len(value) <= MAX_ATTRIBUTE_CHARS else value[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if value - value == 0.0 else str(value)  # nan/inf are not JSON
    try:
        text = _dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text[:MAX_ATTRIBUTE_CHARS]


def _stack_trace(value: Any) -> Any:
    """The runtime's ``stackTrace`` list (formatted frames) as one text, like a traceback."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(v if v.endswith("\n") else v + "\n" for v in value).rstrip("\n")
    return value


def _line(timestamp: float, level: str, body: str, request_id: Optional[str], attributes: Dict[str, Any],
          max_body: int) -> LogLine:
    if len(body) > max_body:
        attributes[TRUNCATED_ATTRIBUTE] = len(body)
        body = body[:max_body]
    size = len(body) + (len(request_id) if request_id else 0)
    for key, value in attributes.items():
        size += 32 + len(key) + (len(value) if isinstance(value, str) else 8)
    return LogLine(timestamp, level, body, request_id, attributes, size)


def _parse_object(record: Dict[str, Any], event_time: float, min_severity: int, max_body: int) -> Optional[LogLine]:
    level = "info"
    for key in _LEVEL_KEYS:
        raw = record.get(key)
        if isinstance(raw, str):
            level = _level(raw) or "info"
            break
    if SEVERITY[level] < min_severity:
        return None
    timestamp = None
    for key in _TIME_KEYS:
        if key in record:
            timestamp = _epoch(record[key])
            break
    request_id = None
    for key in _REQUEST_ID_KEYS:
        raw = record.get(key)
        if isinstance(raw, str):
            request_id = _request_id(raw)
            break
    body: Any = None
    for key in _MESSAGE_KEYS:
        if key in record:
            body = record[key]
            break
    attributes: Dict[str, Any] = {}
    for key, value in record.items():
        if key in _CONSUMED or not isinstance(key, str) or len(key) > MAX_KEY_CHARS or key.startswith("sentry."):
            continue
        if len(attributes) >= MAX_ATTRIBUTES:
            break
        if value is not None:
            attributes[_RENAMED.get(key, key)] = _attribute_value(_stack_trace(value) if key == "stackTrace" else value)
    if body is None:  # no message: the error's message, else the record itself
        body = attributes.pop("exception.message", None) or (record if attributes else "")
    if not isinstance(body, str):
        try:
            body = _dumps(body)
        except (ValueError, TypeError, RecursionError):
            body = repr(body)
    if body.endswith("\n"):
        body = body.rstrip("\r\n")
    if not body:
        return None
    if timestamp is None or (timestamp == int(timestamp) and 0.0 <= event_time - timestamp < 1.0):
        timestamp = event_time  # none, or whole seconds (Python's JSON format): the event's ms keep the order
    return _line(timestamp, level, body, request_id, attributes, max_body)


def _parse_text(record: str, event_time: float, min_severity: int, max_body: int) -> Optional[LogLine]:
    if record.endswith("\n"):
        record = record.rstrip("\r\n")
    if not record or record.startswith(SKIP_PREFIXES):
        return None
    first = record[0]
    if first == "[":  # Python runtime: [LEVEL]\t<time>\t<request id>\t<message>, or [LEVEL] <message>
        close = record.find("]", 1, 13)
        level = _level(record[1:close]) if close > 0 else None
        if level is not None:
            if SEVERITY[level] < min_severity:
                return None
            if record[close + 1:close + 2] == "\t":
                parts = record.split("\t", 3)
                if len(parts) == 4:
                    when = iso_to_epoch(parts[1])
                    if when is not None:
                        return _line(when, level, parts[3], _request_id(parts[2]), {}, max_body)
            return _line(event_time, level, record[close + 1:].lstrip(" \t"), None, {}, max_body)
    elif first == "{" and record.endswith("}") and len(record) <= max_body:
        try:
            value = json.loads(record)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict) and ("message" in value or "msg" in value or "level" in value):
            return _parse_object(value, event_time, min_severity, max_body)
    elif first.isdigit() and record[4:5] == "-" and "\t" in record[:48]:  # Node/.NET: time\tid\tLEVEL\tmsg
        parts = record.split("\t", 3)
        if len(parts) == 4:
            level = _level(parts[2])
            when = iso_to_epoch(parts[0]) if level is not None else None
            if level is not None and when is not None:
                if SEVERITY[level] < min_severity:
                    return None
                return _line(when, level, parts[3], _request_id(parts[1]), {}, max_body)
    if SEVERITY["info"] < min_severity:
        return None
    return _line(event_time, "info", record, None, {}, max_body)


def parse(record: Any, time: Any, min_level: str = "info", max_body: int = MAX_BODY_CHARS) -> Optional[LogLine]:
    """The log in one Telemetry ``function`` record (``record`` a str or a dict, ``time`` the event's
    ISO time), or None: below ``min_level``, empty, a platform line, or not a record. Never raises.

    The line's own time wins over ``time`` (the event's time is used for prints, records without
    one, and whole-second JSON times within the event's second); a bad ``time`` means now. Bodies
    longer than ``max_body`` characters are cut, the original length kept in the attribute
    ``lambda.log.original_length``."""
    try:
        event_time = iso_to_epoch(time)
        if event_time is None:
            event_time = _time.time()
        min_severity = SEVERITY[level_of(min_level) or "info"]
        if isinstance(record, str):
            cut = 2 * max_body + 256
            if len(record) > cut:  # cut before splitting a huge line; its body is cut to max_body anyway
                line = _parse_text(record[:cut], event_time, min_severity, max_body)
                if line is not None and TRUNCATED_ATTRIBUTE in line.attributes:
                    line.attributes[TRUNCATED_ATTRIBUTE] += len(record) - cut
                return line
            return _parse_text(record, event_time, min_severity, max_body)
        if isinstance(record, dict):
            return _parse_object(record, event_time, min_severity, max_body)
    except Exception:  # a record must never break the listener; garbage is simply not a log
        return None
    return None
