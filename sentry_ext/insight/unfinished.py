"""Invocations the SDK never finished: decided from Telemetry records, INVOKE events and the SDK's envelopes.

A request is *unfinished* when Lambda ended it before the function's SDK could send its
transaction: runtimeDone (or report) status ``timeout``, a runtime killed for memory or that
exited (``classify`` of failures.py: ``timeout``, ``oom``, ``exit``), any ``failure`` status,
or a request still open at a SHUTDOWN that reset the sandbox (reason ``timeout``/``failure``).
It is never unfinished when one of the SDK's envelopes for it held a ``transaction`` item (a
raise the SDK caught still sends one), nor when the SDK's trace said ``sampled: "false"`` (the
SDK would not have sent one either). Each unfinished request goes to ``on_unfinished`` once.

A request is decided when its ``platform.report`` arrives, or earlier when the lifecycle calls
``settle`` (``end`` mode, before the drain), or at SHUTDOWN (``settle_all``).

Which request an SDK envelope belongs to: the one running now (on-demand runs one at a time).
When that is unclear (none running, the running one already ended, or several overlap on
Managed Instances) and the envelope holds a transaction, the request id its payload names.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from .function_logs import iso_to_epoch
from .failures import classify
from ..awslambda.extensions_api import is_reset
from ..awslambda.telemetry_records import Record, Report, RuntimeDone, Start, request_id as valid_request_id
from ..delivery.request import Request
from ..protocol.body import zlib_wbits

log = logging.getLogger(__name__)

KEEP_REQUESTS = 64
OVERLAP_LOOKBACK = 8  # recent requests looked at for one still running beside the current one
PREFIX_BYTES = 16384  # decoded bytes of a compressed SDK body looked through for a transaction item
# Item header lines as sentry-python and sentry-javascript write them (compact JSON, type first),
# and as Python's json.dumps does by default.
_TRANSACTION_ITEM = re.compile(rb'\n\{"type": ?"transaction"')
_DSC_FIELDS = ("trace_id", "sample_rate", "sampled", "release", "environment")


def holds_transaction(req: Request, decoded: Optional[bytes] = None) -> Optional[bool]:
    """Whether an SDK envelope holds a ``transaction`` item; None when its body cannot be read
    here (brotli, zstd, corrupt). An SDK puts its transaction first, right after the envelope
    header: a compressed body is decoded only as far as ``PREFIX_BYTES`` (``decoded``: the body
    already decoded whole, if it was)."""
    if decoded is not None:
        return _TRANSACTION_ITEM.search(decoded, 0, PREFIX_BYTES) is not None
    encoding = req.encoding
    if encoding in ("", "identity"):
        return _TRANSACTION_ITEM.search(req.body) is not None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    try:
        prefix = zlib.decompressobj(zlib_wbits(req.body, encoding)).decompress(req.body, PREFIX_BYTES)
    except zlib.error:
        return None
    return _TRANSACTION_ITEM.search(prefix) is not None


class Unfinished:
    """What ``on_unfinished`` gets: one request the SDK never finished, with the facts known."""

    __slots__ = ("request_id", "kind", "status", "error_type", "start", "end", "cold_start", "deadline_hit",
                 "xray", "dsc", "report")

    def __init__(self, request_id: str, kind: str, status: str, error_type: Optional[str], start: float,
                 end: float, cold_start: bool, deadline_hit: bool, xray: Optional[str],
                 dsc: Optional[Dict[str, str]], report: Optional[Report]) -> None:
        self.request_id = request_id
        self.kind = kind  # timeout, oom, exit, failure, or shutdown (cut short by a reset)
        self.status = status  # Lambda's status ("timeout", "error", "failure"; "shutdown" for a cut)
        self.error_type = error_type
        self.start = start  # epoch seconds: platform.start (or the INVOKE's arrival)
        self.end = end  # epoch seconds: runtimeDone (or the deadline, or the SHUTDOWN)
        self.cold_start = cold_start
        self.deadline_hit = deadline_hit  # it ran into the function's timeout
        self.xray = xray
        self.dsc = dsc or {}  # the SDK's dynamic sampling context (trace_id, sample_rate, ...) if seen
        self.report = report

    def __repr__(self) -> str:
        return "Unfinished(%s, %s, %.3f s)" % (self.request_id, self.kind, self.end - self.start)


class _Request:
    __slots__ = ("request_id", "cold_start", "invoked_at", "deadline", "start", "runtime_done", "report", "xray",
                 "sdk_transaction", "dsc", "decided")

    def __init__(self, request_id: str, cold_start: bool, now: float) -> None:
        self.request_id = request_id
        self.cold_start = cold_start
        self.invoked_at = now
        self.deadline: Optional[float] = None  # epoch seconds, from INVOKE's deadlineMs
        self.start: Optional[Start] = None
        self.runtime_done: Optional[RuntimeDone] = None
        self.report: Optional[Report] = None
        self.xray: Optional[str] = None
        self.sdk_transaction = False
        self.dsc: Optional[Dict[str, str]] = None
        self.decided = False

    @property
    def ended(self) -> bool:
        return self.runtime_done is not None or self.report is not None


def _dsc(header: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    trace = header.get("trace") if header else None
    if not isinstance(trace, dict):
        return None
    return {name: trace[name] for name in _DSC_FIELDS if isinstance(trace.get(name), str) and len(trace[name]) <= 200}


class UnfinishedTracker:
    """Thread-safe: fed by the telemetry listener, the ingest threads and the lifecycle thread."""

    def __init__(self, on_unfinished: Callable[[Unfinished], None], clock: Callable[[], float] = time.time,
                 keep: int = KEEP_REQUESTS) -> None:
        self.on_unfinished = on_unfinished
        self._clock = clock
        self._keep = keep
        self._lock = threading.Lock()
        self._requests: "collections.OrderedDict[str, _Request]" = collections.OrderedDict()
        self._current: Optional[_Request] = None
        self._seen_any = False
        self._early_transactions: "collections.OrderedDict[str, bool]" = collections.OrderedDict()

    # -- input ---------------------------------------------------------------------------------

    def invoked(self, event: Mapping[str, Any]) -> None:
        """An INVOKE event: its request id, deadline and tracing header."""
        rid = valid_request_id(event.get("requestId"))
        if rid is None:
            return
        deadline_ms = event.get("deadlineMs")
        tracing = event.get("tracing")
        with self._lock:
            req = self._touch(rid)
            if isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool) and deadline_ms > 0:
                req.deadline = deadline_ms / 1000.0
            if req.xray is None and isinstance(tracing, dict) and isinstance(tracing.get("value"), str):
                req.xray = tracing["value"][:256]

    def feed(self, records: Iterable[Record]) -> None:
        """Typed records from one Telemetry batch: platform.start, runtimeDone and report count."""
        found: List[Unfinished] = []
        with self._lock:
            for record in records:
                if isinstance(record, Start):
                    req = self._touch(record.request_id)
                    req.start = record
                    req.xray = req.xray or record.tracing
                elif isinstance(record, RuntimeDone):
                    req = self._touch(record.request_id)
                    req.runtime_done = record
                    req.xray = req.xray or record.tracing
                elif isinstance(record, Report):
                    req = self._touch(record.request_id)
                    req.report = record
                    self._collect(req, None, found)
        self._emit(found)

    def note_envelope(self, req: Request, header: Optional[Mapping[str, Any]],
                      request_id_of: Optional[Callable[[], Optional[str]]] = None,
                      decoded: Optional[bytes] = None) -> None:
        """An SDK envelope (before it is queued): its trace's sampling context, and whether it
        holds the request's own transaction (``decoded``: its body decoded, if the ingest did)."""
        with self._lock:
            target = self._unambiguous()
            if target is not None and target.sdk_transaction and target.dsc is not None:
                return  # nothing left to learn about this request
        held = holds_transaction(req, decoded)
        if held is None:
            held = True  # cannot look inside: it may be the transaction, and a double is worse than none
        dsc = _dsc(header) if target is None or target.dsc is None else None
        rid = None
        if held and target is None and request_id_of is not None:
            rid = valid_request_id(request_id_of())
        with self._lock:
            if target is None and rid is not None:
                target = self._requests.get(rid)
                if target is None:  # its INVOKE and records have not come yet
                    self._early_transactions[rid] = True
                    while len(self._early_transactions) > 8:
                        self._early_transactions.popitem(last=False)
                    return
            if target is None:
                return
            if held:
                target.sdk_transaction = True
            if target.dsc is None and dsc is not None:
                target.dsc = dsc

    # -- decisions -------------------------------------------------------------------------------

    def settle(self, request_id: str) -> None:
        """Decide ``request_id`` now with the records at hand (``end`` mode, before the drain)."""
        found: List[Unfinished] = []
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None and req.ended:
                self._collect(req, None, found)
        self._emit(found)

    def settle_all(self, reason: Optional[str]) -> None:
        """At SHUTDOWN: decide every request; after a reset, one still open was cut short."""
        found: List[Unfinished] = []
        cut = is_reset(reason)
        with self._lock:
            # Cut short: the running request, and those started beside it (Managed Instances); an
            # older one still open lost its records, and says nothing about this reset.
            recent = list(itertools.islice(reversed(self._requests.values()), OVERLAP_LOOKBACK))
            for req in list(self._requests.values()):
                if req.ended:
                    self._collect(req, None, found)
                elif cut and (req is self._current or (req.start is not None and req in recent)):
                    self._collect(req, (reason or "").lower(), found)
        self._emit(found)

    # -- internals (lock held) -----------------------------------------------------------------

    def _touch(self, rid: str) -> _Request:
        req = self._requests.get(rid)
        if req is None:
            req = _Request(rid, cold_start=not self._seen_any, now=self._clock())
            req.sdk_transaction = self._early_transactions.pop(rid, False)
            self._seen_any = True
            self._requests[rid] = req
            self._current = req
            while len(self._requests) > self._keep:
                self._requests.popitem(last=False)
        return req

    def _unambiguous(self) -> Optional[_Request]:
        """The request an SDK envelope arriving now belongs to, when that is clear."""
        req = self._current
        if req is None or req.ended:
            return None
        for other in itertools.islice(reversed(self._requests.values()), OVERLAP_LOOKBACK):
            if other is not req and other.start is not None and not other.ended:
                return None  # overlapping requests (Managed Instances)
        return req

    def _collect(self, req: _Request, cut_reason: Optional[str], found: List[Unfinished]) -> None:
        if req.decided:
            return
        req.decided = True
        if req.sdk_transaction or (req.dsc is not None and req.dsc.get("sampled") == "false"):
            return
        done, report = req.runtime_done, req.report
        source = report if report is not None else done
        now = self._clock()
        if source is not None:
            status = source.status
            error_type = source.error_type or (done.error_type if done is not None else None)
            kind = classify(status, error_type, report)
            if kind is None and status == "failure":
                kind = "failure"
            if kind is None:
                return
        elif cut_reason is not None:
            kind, status, error_type = "shutdown", "shutdown", None
        else:
            req.decided = False  # nothing known yet
            return
        start = iso_to_epoch(req.start.time) if req.start is not None else None
        start = start if start is not None else req.invoked_at
        duration_ms = done.duration_ms if done is not None else None
        if duration_ms is None and report is not None:
            duration_ms = report.duration_ms
        done_at = iso_to_epoch(done.time) if done is not None else None
        if duration_ms is not None:
            end = start + duration_ms / 1000.0
        elif done_at is not None:
            end = done_at
        else:
            end = min(now, req.deadline) if req.deadline is not None else now
        end = max(start, end)
        deadline_hit = kind == "timeout" or (kind == "shutdown" and (
            cut_reason == "timeout" or (req.deadline is not None and now >= req.deadline)))
        found.append(Unfinished(req.request_id, kind, status, error_type, start, end, req.cold_start, deadline_hit,
                                req.xray, req.dsc, report))

    def _emit(self, found: List[Unfinished]) -> None:
        for item in found:
            log.info("invocation unfinished by the SDK: %s", item)
            try:
                self.on_unfinished(item)
            except Exception:
                log.exception("could not report %r (survived)", item)
