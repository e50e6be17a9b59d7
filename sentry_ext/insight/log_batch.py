"""Pending function logs, bounded in count and bytes, and the envelope ``log`` item that carries them.

The item is what sentry-python 2.x sends (``_log_batcher.py``): header ``{"type": "log",
"item_count": N, "content_type": "application/vnd.sentry.items.log+json"}``, payload
``{"version": 2, "items": [...]}``, each log ``{timestamp, trace_id, level, body, severity_number,
attributes}`` with typed attributes ``{"value": ..., "type": "string|integer|double|boolean"}``,
severity also as ``sentry.severity_number``/``sentry.severity_text`` attributes like the SDK.
``log_envelope`` makes the whole envelope gzip'd (``Content-Encoding: gzip``), as queued and sent:
each log repeats ~0.8 KB of attributes, so 100 logs take ~2-4 KB instead of ~90 KB in the queue
and upstream.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import zlib
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from .. import __version__
from ..protocol.envelope import Item
from .function_logs import SEVERITY, LogLine
from ..util.ids import uuid4_hex, valid_trace_id

MAX_LOGS_PER_ITEM = 100  # the protocol's limit per envelope
DEFAULT_MAX_ITEMS = 1000  # sentry-python's MAX_BEFORE_DROP
DEFAULT_MAX_BYTES = 1024 * 1024
# Bytes counted per pending line beyond ``LogLine.size``: its Python objects take ~350 bytes, its
# JSON with the context attributes ~900; one figure serves the memory bound and ``log_byte``.
LINE_OVERHEAD = 512
# Log envelopes are sent gzip'd (Sentry takes ``Content-Encoding: gzip``): every log repeats its
# attributes, so level 1 cuts 100 logs from ~90 KB to ~2-4 KB for ~1 µs of CPU per log. A full
# 32 KiB window (smaller ones lose the repeats and cost more CPU) but memLevel 5: the compressor's
# state is ~150 KB instead of zlib's default ~270 KB, for the same output. Logs go in by tens (one
# call per log costs ~0.3 µs more per log; the whole payload at once would be held whole).
GZIP_LEVEL = 1
MAX_CACHED_TAILS = 32  # per context: (level, request id) pairs whose JSON after the body (~0.8 KB) is kept
GZIP_MEM_LEVEL = 5
LOGS_PER_COMPRESS = 10
DROP_REASON = "queue_overflow"  # what sentry-python's log batcher reports for the same loss
CONTENT_TYPE = "application/vnd.sentry.items.log+json"
ORIGIN = "auto.log.aws_lambda_extension"
SDK_NAME = "sentry.lambda.extension"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _typed(value: Any) -> str:
    """``{"value": ..., "type": ...}`` JSON of one str/int/float/bool attribute value."""
    if isinstance(value, str):
        return '{"value":%s,"type":"string"}' % _encode(value)
    if isinstance(value, bool):
        return '{"value":%s,"type":"boolean"}' % ("true" if value else "false")
    if isinstance(value, int):
        return '{"value":%d,"type":"integer"}' % value
    if isinstance(value, float) and value - value == 0.0:
        return '{"value":%r,"type":"double"}' % value
    return '{"value":%s,"type":"string"}' % _encode(str(value))


def _attributes_json(attributes: Dict[str, Any]) -> str:
    return ",".join("%s:%s" % (_encode(key), _typed(value)) for key, value in attributes.items())


class LogContext:
    """What every log of this function carries: resource attributes, release and environment."""

    __slots__ = ("attributes", "_fragment", "_keys", "_tails")

    def __init__(self, function_name: Optional[str] = None, function_version: Optional[str] = None,
                 region: Optional[str] = None, release: Optional[str] = None, environment: Optional[str] = None,
                 origin: str = ORIGIN) -> None:
        attributes: Dict[str, Any] = {
            "sentry.origin": origin,
            "sentry.sdk.name": SDK_NAME,
            "sentry.sdk.version": __version__,
            "cloud.provider": "aws",
            "cloud.platform": "aws_lambda",
        }
        optional = (("faas.name", function_name), ("faas.version", function_version), ("cloud.region", region),
                    ("sentry.release", release), ("sentry.environment", environment))
        attributes.update((key, value) for key, value in optional if isinstance(value, str) and value)
        self.attributes = attributes
        self._fragment = _attributes_json(attributes)
        self._keys = frozenset(attributes) | {"faas.invocation_id", "sentry.severity_number", "sentry.severity_text"}
        self._tails: Dict[Tuple[str, Optional[str]], str] = {}  # (level, request id) -> the JSON after the body

    def log_json(self, line: LogLine, trace_id: str) -> str:
        """One log of the payload's ``items`` as JSON text."""
        level = line.level if line.level in SEVERITY else "info"
        extra = {k: v for k, v in line.attributes.items() if k not in self._keys} if line.attributes else None
        if extra:
            tail = self._tail(level, line.request_id, _attributes_json(extra))
        else:  # the usual line: its tail is the same for every line of its request and level
            key = (level, line.request_id)
            tail = self._tails.get(key)
            if tail is None:
                if len(self._tails) >= MAX_CACHED_TAILS:
                    self._tails.clear()
                tail = self._tails[key] = self._tail(level, line.request_id, None)
        timestamp = float(line.timestamp)
        if timestamp - timestamp != 0.0 or timestamp <= 0.0:  # nan/inf are not JSON; Sentry needs a time
            timestamp = time.time()
        return '{"timestamp":%r,"trace_id":"%s","level":"%s","body":%s%s' % (
            timestamp, trace_id, level, _encode(line.body), tail)

    def _tail(self, level: str, request_id: Optional[str], extra: Optional[str]) -> str:
        """A log's JSON after its body: severity number and attributes, and the closing brace."""
        parts = [self._fragment, _SEVERITY_FRAGMENTS[level]]
        if request_id:
            parts.append('"faas.invocation_id":{"value":%s,"type":"string"}' % _encode(request_id))
        if extra:
            parts.append(extra)
        return ',"severity_number":%d,"attributes":{%s}}' % (SEVERITY[level], ",".join(parts))


_SEVERITY_FRAGMENTS = {
    level: '"sentry.severity_number":{"value":%d,"type":"integer"},"sentry.severity_text":{"value":"%s","type":"string"}'
    % (number, level) for level, number in SEVERITY.items()
}


_PAYLOAD_HEAD = b'{"version":2,"items":['
_PAYLOAD_TAIL = b"]}"


def _log_jsons(lines: Iterable[LogLine], context: LogContext,
               trace_id_of: Callable[[Optional[str]], str]) -> List[bytes]:
    """Each line's log as UTF-8 JSON (at most 100 lines: ValueError beyond)."""
    cache: Dict[Optional[str], str] = {}
    fallback: Optional[str] = None
    logs: List[bytes] = []
    for line in lines:
        if len(logs) >= MAX_LOGS_PER_ITEM:
            raise ValueError("at most %d logs per envelope item" % MAX_LOGS_PER_ITEM)
        trace_id = cache.get(line.request_id)
        if trace_id is None:
            try:
                asked: Any = trace_id_of(line.request_id)
            except Exception:  # the caller's lookup must not cost the logs
                asked = None
            if valid_trace_id(asked):
                trace_id = asked
            else:
                trace_id = fallback = fallback or uuid4_hex()
            cache[line.request_id] = trace_id
        logs.append(context.log_json(line, trace_id).encode("utf-8", "replace"))  # "replace": lone surrogates
    return logs


def _item_headers(count: int, length: int) -> Dict[str, Any]:
    return {"type": "log", "item_count": count, "content_type": CONTENT_TYPE, "length": length}


def log_item(lines: Iterable[LogLine], context: LogContext, trace_id_of: Callable[[Optional[str]], str]) -> Item:
    """The envelope ``log`` item for at most 100 ``lines`` (ValueError beyond); ``trace_id_of(request_id)``
    gives each line's trace id, asked once per request id (an invalid answer or an exception gives
    a fresh id, shared within the item)."""
    logs = _log_jsons(lines, context, trace_id_of)
    payload = _PAYLOAD_HEAD + b",".join(logs) + _PAYLOAD_TAIL
    return Item(_item_headers(len(logs), len(payload)), payload)


def log_envelope(lines: Iterable[LogLine], context: LogContext, trace_id_of: Callable[[Optional[str]], str],
                 headers: Dict[str, Any], level: int = GZIP_LEVEL) -> bytes:
    """The gzip'd envelope of ``headers`` and the ``log_item`` of ``lines``: the bytes of
    ``Envelope(headers, [log_item(...)]).serialize()``, compressed ten logs at a time, so neither
    the payload nor the envelope is ever held whole (only each log's JSON, and the output)."""
    logs = _log_jsons(lines, context, trace_id_of)
    length = len(_PAYLOAD_HEAD) + sum(len(log) for log in logs) + max(0, len(logs) - 1) + len(_PAYLOAD_TAIL)
    head = "%s\n%s\n" % (_encode(headers), _encode(_item_headers(len(logs), length)))
    comp = zlib.compressobj(level, zlib.DEFLATED, 31, GZIP_MEM_LEVEL)  # wbits 31: one gzip member
    out = [comp.compress(head.encode("utf-8") + _PAYLOAD_HEAD)]
    for start in range(0, len(logs), LOGS_PER_COMPRESS):
        chunk = b",".join(logs[start:start + LOGS_PER_COMPRESS])
        out.append(comp.compress(b"," + chunk if start else chunk))
    out.append(comp.compress(_PAYLOAD_TAIL + b"\n"))
    out.append(comp.flush())
    return b"".join(out)


class LogBatch:
    """Pending log lines, bounded by count and (approximate) bytes: on overflow the OLDEST go, and
    their loss is counted for client reports. Thread-safe; ``add`` never blocks for long."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES,
                 overhead: int = LINE_OVERHEAD) -> None:
        self.max_items = max(1, max_items)
        self.max_bytes = max(1, max_bytes)
        self.overhead = max(0, overhead)
        self._lines: Deque[LogLine] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._dropped_items = 0
        self._dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def bytes(self) -> int:
        """Approximate bytes pending."""
        return self._bytes

    def add(self, line: LogLine) -> None:
        """Queue ``line``, dropping the oldest lines (or ``line`` itself, if alone too big) to stay in bounds."""
        overhead = self.overhead
        size = line.size + overhead
        with self._lock:
            if size > self.max_bytes:
                self._dropped_items += 1
                self._dropped_bytes += size
                return
            lines = self._lines
            lines.append(line)
            self._bytes += size
            while len(lines) > self.max_items or self._bytes > self.max_bytes:
                old_size = lines.popleft().size + overhead
                self._bytes -= old_size
                self._dropped_items += 1
                self._dropped_bytes += old_size

    def take(self, max_items: int = MAX_LOGS_PER_ITEM) -> List[LogLine]:
        """Remove and return up to ``max_items`` of the oldest pending lines."""
        with self._lock:
            lines = self._lines
            count = min(max(0, max_items), len(lines))
            out = [lines.popleft() for _ in range(count)]
            self._bytes -= sum(line.size for line in out) + self.overhead * count
            return out

    def take_dropped(self) -> List[Tuple[str, str, int]]:
        """``(reason, category, quantity)`` of the overflow losses since the last call (``log_item``
        and ``log_byte``), for ``Discards.record``; empty if none."""
        with self._lock:
            items, size = self._dropped_items, self._dropped_bytes
            self._dropped_items = self._dropped_bytes = 0
        if not items:
            return []
        return [(DROP_REASON, "log_item", items), (DROP_REASON, "log_byte", size)]
