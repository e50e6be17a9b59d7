"""Function logs from Telemetry records to Sentry Logs envelopes: records in, requests out.

``LogRouter.feed`` walks one batch's typed records in stream order (Lambda sends ``function``
and ``platform`` records in one stream, ordered by time). Each ``function`` record is parsed
(``function_logs.parse``, at least ``SENTRY_EXT_LOGS_LEVEL``) and attributed to its request:

- by the request id the line carries (Python/Node text formats, JSON ``requestId``);
- else by time: the line came between ``platform.start`` and ``platform.runtimeDone`` (or
  ``platform.report``) while exactly one request was in flight. With requests overlapping
  (Lambda Managed Instances, announced by ``platform.initStart`` or seen as a second start before
  the first ended) lines without a request id stay unattributed: never guessed.

Lines wait in a bounded ``LogBatch`` (oldest dropped on overflow, counted as ``log_item`` /
``log_byte`` in client reports) and go out as gzip'd envelopes of at most 100 logs, built and handed to
``submit`` (the queue, behind the mirrored rate limits) when a request's ``platform.runtimeDone``
(or ``platform.report``) is reached in the stream (the lines after it in the same batch, of the
next request, wait for that request's end), so in ``end`` mode they are queued before the drain that
precedes the freeze; early when the batch reaches half its bounds (a chatty invocation); and at
SHUTDOWN (``flush``). Each line's ``trace_id`` is the SDK's trace of its request when the SDK's
envelopes carried one, else one made per request; it is fixed at the request's first envelope so
all of a request's lines group together.

``extension`` records are never forwarded (the extension's own output would loop back), nor are
Lambda's START/END/REPORT lines (the parser drops them).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional

from ..protocol.client_reports import envelope_request
from ..config import Config
from ..protocol.discards import Discards
from ..protocol.envelope import Envelope, EnvelopeError
from ..protocol.body import INSPECTABLE_ENCODINGS, decode_body
from ..awslambda.exec_model import MANAGED_INSTANCES
from .function_logs import LogLine, parse
from .invocations import KEEP_LOG_LINES
from ..util.ids import uuid4_hex, valid_trace_id
from .log_batch import MAX_LOGS_PER_ITEM, LogBatch, LogContext, log_envelope
from ..delivery.request import Request
from ..util.stats import Stats
from ..awslambda.telemetry_records import FunctionLog, InitStart, Record, Report, RuntimeDone, Start

log = logging.getLogger(__name__)

KEEP_TRACES = 64  # per-request trace ids remembered (requests of this sandbox, newest)
MAX_IN_FLIGHT = 256  # request ids tracked as started and not yet done
HINT_DECODE_LIMIT = 1024 * 1024  # bytes decoded to look for the SDK's own log items
DUPLICATES_HINT = ("the function's SDK sends its own logs (enable_logs) and SENTRY_EXT_LOGS=on forwards the "
                   "function's log lines too: Sentry gets them twice; turn one of them off")

# Parsed and attributed lines of one batch (each request's last KEEP_LOG_LINES), by ``id()`` of
# their FunctionLog record: Invocations keeps them as a failure event's breadcrumbs.
ParsedLines = Dict[int, LogLine]


class LogRouter:
    """Thread-safe: the telemetry listener feeds it, the lifecycle flushes it at SHUTDOWN."""

    def __init__(self, cfg: Config, submit: Callable[[Request], bool], discards: Discards, stats: Stats,
                 sdk_trace: Callable[[str], Mapping[str, str]], batch: Optional[LogBatch] = None) -> None:
        assert cfg.dsn is not None
        self.cfg = cfg
        self.submit = submit
        self.discards = discards
        self.stats = stats
        self.sdk_trace = sdk_trace  # request id -> the SDK's trace (trace_id, release, environment)
        self.min_level = cfg.logs_level
        self.batch = batch if batch is not None else LogBatch()
        self._early_items = max(1, self.batch.max_items // 2)
        self._early_bytes = self.batch.max_bytes // 2
        self._in_flight: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._overlapping = False  # requests run concurrently: no attribution by time
        self._traces: "collections.OrderedDict[str, str]" = collections.OrderedDict()
        self._contexts: Dict[Any, LogContext] = {}
        self._lock = threading.RLock()
        self._hinted = False

    # -- input ---------------------------------------------------------------------------------

    def feed(self, records: Iterable[Record]) -> ParsedLines:
        """One batch's records, in order; returns the last KEEP_LOG_LINES lines of each request
        parsed from it (the breadcrumbs), by ``id()`` of their record."""
        parsed: ParsedLines = {}
        kept: Dict[Optional[str], Deque[int]] = {}
        received = 0
        with self._lock:
            add = self.batch.add
            for record in records:
                if isinstance(record, FunctionLog):
                    if record.type != "function":
                        continue  # "extension": our own output among them
                    line = parse(record.line, record.time, self.min_level)
                    if line is None:
                        continue
                    if line.request_id is None and len(self._in_flight) == 1 and not self._overlapping:
                        line = line._replace(request_id=next(iter(self._in_flight)))
                    add(line)
                    received += 1
                    self._keep(parsed, kept, line.request_id, id(record), line)
                    if len(self.batch) >= self._early_items or self.batch.bytes >= self._early_bytes:
                        self._flush()  # a chatty request: send before the bound drops lines
                elif isinstance(record, Start):
                    if self._in_flight and record.request_id not in self._in_flight:
                        self._overlapping = True
                    self._in_flight[record.request_id] = None
                    while len(self._in_flight) > MAX_IN_FLIGHT:
                        self._in_flight.popitem(last=False)
                elif isinstance(record, (RuntimeDone, Report)):
                    self._in_flight.pop(record.request_id, None)
                    # Now, not after the batch: the lines of a request started later in this
                    # batch wait for its own end, when its SDK's envelopes (and trace) are in.
                    self._flush()
                elif isinstance(record, InitStart) and record.initialization_type == MANAGED_INSTANCES:
                    self._overlapping = True
            if received:
                self.stats.incr("logs_received", received)
        return parsed

    @staticmethod
    def _keep(parsed: ParsedLines, kept: Dict[Optional[str], Deque[int]], request_id: Optional[str], key: int,
              line: LogLine) -> None:
        """Only the last KEEP_LOG_LINES of each request are breadcrumbs: the others are not kept
        alive by the batch's result once they were sent (memory: a batch holds up to 1000 lines)."""
        if request_id is None:
            return
        ids = kept.get(request_id)
        if ids is None:
            ids = kept[request_id] = collections.deque()
        ids.append(key)
        parsed[key] = line
        if len(ids) > KEEP_LOG_LINES:
            del parsed[ids.popleft()]

    def note_sdk_envelope(self, req: Request, header: Optional[Mapping[str, Any]]) -> None:
        """An SDK envelope at ingest: log a one-time hint if it carries ``log`` items (the SDK's
        own logs, which the extension's would duplicate). Only header-less envelopes (no event id,
        no trace: how the SDK sends logs) are looked into, and only until the hint is given."""
        if self._hinted or header is None or "event_id" in header or "trace" in header:
            return  # not an envelope, or one with an event or a trace (the SDK's logs have neither)
        encoding = req.encoding
        if encoding not in INSPECTABLE_ENCODINGS:
            return
        try:
            envelope = Envelope.parse(decode_body(req.body, encoding, HINT_DECODE_LIMIT))
        except EnvelopeError:
            return
        if any(item.type == "log" for item in envelope.items) and not self._hinted:
            self._hinted = True
            log.warning("%s", DUPLICATES_HINT)

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> int:
        """Build and submit envelopes for every pending line (at SHUTDOWN); the envelopes submitted."""
        with self._lock:
            return self._flush()

    def _flush(self) -> int:
        sent = 0
        for _ in range(len(self.batch) // MAX_LOGS_PER_ITEM + 1):
            lines = self.batch.take(MAX_LOGS_PER_ITEM)
            if not lines:
                break
            try:
                req = self._request(lines)
            except Exception:  # a bug here must not cost the listener; the lines are counted as lost
                log.exception("could not build a log envelope of %d line(s) (survived)", len(lines))
                self._lost(len(lines), sum(line.size for line in lines))
                continue
            if self.submit(req):  # else rate limited or no room: counted there, for client reports too
                self.stats.incr("logs_forwarded", len(lines))
                sent += 1
            else:
                self.stats.incr("logs_dropped", len(lines))
        for reason, category, quantity in self.batch.take_dropped():
            self.discards.record(self.cfg.dsn.public_key, reason, category, quantity)  # type: ignore[union-attr]
            if category == "log_item":
                self.stats.incr("logs_dropped", quantity)
        return sent

    def _lost(self, items: int, size: int) -> None:
        key = self.cfg.dsn.public_key  # type: ignore[union-attr]
        self.discards.record(key, "internal_sdk_error", "log_item", items)
        self.discards.record(key, "internal_sdk_error", "log_byte", size)
        self.stats.incr("logs_dropped", items)

    def _request(self, lines: List[LogLine]) -> Request:
        body = log_envelope(lines, self._context(lines), self._trace_id,
                            {"sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return envelope_request(self.cfg.dsn, self.cfg.dsn.public_key, body, "gzip")  # type: ignore[union-attr]

    def _context(self, lines: List[LogLine]) -> LogContext:
        """Resource attributes, with release and environment from the settings, else from the SDK's
        trace of the first attributed line's request."""
        cfg = self.cfg
        release, environment = cfg.release, cfg.environment
        if release is None or environment is None:
            rid = next((line.request_id for line in lines if line.request_id), None)
            trace = self._safe_sdk_trace(rid) if rid else {}
            release = release or trace.get("release")
            environment = environment or trace.get("environment")
        key = (release, environment)
        context = self._contexts.get(key)
        if context is None:
            if len(self._contexts) >= 8:
                self._contexts.clear()
            context = self._contexts[key] = LogContext(cfg.function_name or None, cfg.function_version or None,
                                                        cfg.region or None, release, environment)
        return context

    def _trace_id(self, request_id: Optional[str]) -> Optional[str]:
        """The trace id of ``request_id``'s lines (None for unattributed lines: a fresh one per envelope)."""
        if request_id is None:
            return None
        known = self._traces.get(request_id)
        if known is None:
            sdk = self._safe_sdk_trace(request_id).get("trace_id")
            known = sdk if valid_trace_id(sdk) else uuid4_hex()
            self._traces[request_id] = known
            while len(self._traces) > KEEP_TRACES:
                self._traces.popitem(last=False)
        return known

    def _safe_sdk_trace(self, request_id: str) -> Mapping[str, str]:
        try:
            return self.sdk_trace(request_id) or {}
        except Exception:
            log.exception("SDK trace lookup failed (survived)")
            return {}
