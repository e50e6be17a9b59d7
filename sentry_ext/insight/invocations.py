"""Per-invocation bookkeeping from Telemetry records: records in, decisions out.

``Invocations`` is fed typed records (``telemetry_records``), the INVOKE events the lifecycle
loop sees and the headers of the SDK's envelopes. It keeps bounded state per request (the last
``KEEP_REQUESTS``): its start, runtimeDone and report records, the X-Ray trace header, the Sentry
trace the SDK's envelopes carried (trace id, release, environment) and the last
``KEEP_LOG_LINES`` function log lines (as the log router parsed and attributed them: only with
SENTRY_EXT_LOGS=on, which subscribes to them). The lifecycle waits on it (``wait``, ``await_outcome``)
and it hands each failure the SDK could not report to ``on_failure`` exactly once:

- ``timeout``: status ``timeout`` (errorType ``Sandbox.Timedout`` or ``Sandbox.Timeout``);
- ``oom``: errorType ``Runtime.OutOfMemory``, or a timeout/crash whose report shows
  ``maxMemoryUsedMB`` at ``memorySizeMB`` (Lambda sometimes reports a memory kill as a timeout);
- ``exit``: errorType ``Runtime.ExitError`` (the runtime process exited or was killed);
- ``init``: an Init whose ``initRuntimeDone``/``initReport`` status is not ``success`` (Lambda
  sends both for every Init attempt, failed or aborted; the invocation that then meets the failed
  Init reports its error again, so an ``exit`` after a failed Init is not a second event).

A handler exception the runtime reported (status ``error`` with any other errorType) is not a
failure here: the function's SDK reports it. A request is decided when its ``platform.report``
arrives, or earlier when the lifecycle calls ``settle`` (``end`` mode, before the drain), or at
SHUTDOWN (``settle_all``), with the facts at hand then.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from .failures import KINDS, Failure, classify
from .function_logs import LogLine
from ..util.ids import valid_trace_id
from ..awslambda.telemetry_records import (FunctionLog, InitReport, InitRuntimeDone, Record, Report, RuntimeDone,
                                Start, request_id as valid_request_id, tracing_value)

log = logging.getLogger(__name__)

KEEP_REQUESTS = 64
KEEP_LOG_LINES = 20
NO_LOG_LINES: Deque[Tuple[float, str, str]] = collections.deque(maxlen=0)  # appends to it are dropped
LOG_LINE_CHARS = 512
_TRACE_FIELDS = ("release", "environment")
LOOKUPS_PER_REQUEST = 4  # SDK envelope bodies read for their request id, per request (CPU bound)
KEEP_EARLY_TRACES = 8  # SDK traces of requests not seen yet


def _trace_of(header: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    """trace_id, release and environment of an envelope header's ``trace``, or None."""
    trace = header.get("trace") if header else None
    if not isinstance(trace, dict):
        return None
    trace_id = trace.get("trace_id")
    if not valid_trace_id(trace_id):
        return None
    found = {"trace_id": trace_id}
    for name in _TRACE_FIELDS:
        value = trace.get(name)
        if isinstance(value, str) and 0 < len(value) <= 200:
            found[name] = value
    return found


class _Request:
    __slots__ = ("request_id", "cold_start", "start", "runtime_done", "report", "xray", "sdk_trace", "logs",
                 "decided", "invoked")

    def __init__(self, request_id: str, cold_start: bool) -> None:
        self.request_id = request_id
        self.cold_start = cold_start
        self.start: Optional[Start] = None
        self.runtime_done: Optional[RuntimeDone] = None
        self.report: Optional[Report] = None
        self.xray: Optional[str] = None
        self.sdk_trace: Optional[Dict[str, str]] = None
        self.logs: Deque[Tuple[float, str, str]] = collections.deque(maxlen=KEEP_LOG_LINES)
        self.decided = False
        self.invoked = False  # an INVOKE named it: requests run one at a time (not Managed Instances)

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: the report is in, or runtimeDone says it ended normally."""
        done = self.runtime_done
        return self.report is not None or (done is not None and done.status != "timeout"
                                           and classify(done.status, done.error_type) is None)


class Invocations:
    """Thread-safe: fed by the telemetry listener, the ingest and the lifecycle thread."""

    def __init__(self, on_failure: Callable[[Failure], None], kinds: Iterable[str] = KINDS,
                 keep: int = KEEP_REQUESTS) -> None:
        self.on_failure = on_failure
        self.kinds: FrozenSet[str] = frozenset(kinds)
        self._keep = keep
        self._requests: "collections.OrderedDict[str, _Request]" = collections.OrderedDict()
        self._current: Optional[_Request] = None  # the request running now (on-demand: one at a time)
        self._lookups = 0  # SDK envelope bodies read since _current changed
        self._early_traces: "collections.OrderedDict[str, Dict[str, str]]" = collections.OrderedDict()
        self._seen_any = False
        self._init_status: Optional[str] = None  # worst Init status seen
        self._init_error: Optional[str] = None
        self._init_report: Optional[InitReport] = None
        self._init_decided = False
        # ``with self._lock`` (C) where nothing waits; the condition, on the same lock, to wait and notify
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Held from a decision until its callback returned: whoever settles next (the lifecycle
        # before a drain) waits for a failure another thread decided to be queued first.
        self._deciding = threading.RLock()

    # -- input ---------------------------------------------------------------------------------

    def feed(self, records: Iterable[Record], logs: Optional[Mapping[int, LogLine]] = None) -> None:
        """Typed records from one Telemetry batch; ``logs``: the lines the log router parsed and
        attributed from its ``function`` records, by ``id()`` of the record (the breadcrumbs)."""
        failures: List[Failure] = []
        with self._deciding:
            with self._lock:
                for record in records:
                    if isinstance(record, FunctionLog):
                        line = logs.get(id(record)) if logs else None
                        if line is not None:
                            self._log_line(line)
                        continue
                    self._apply(record, failures)
                self._cond.notify_all()
            self._emit(failures)

    def invoked(self, request_id: Any, tracing: Any = None) -> None:
        """An INVOKE event reached the lifecycle loop (it can arrive before ``platform.start``)."""
        rid = valid_request_id(request_id)
        if rid is None:
            return
        with self._lock:
            req = self._touch(rid)
            req.invoked = True
            req.xray = req.xray or tracing_value(tracing)

    def note_envelope(self, header: Optional[Mapping[str, Any]],
                      request_id_of: Optional[Callable[[], Optional[str]]] = None) -> None:
        """An SDK envelope header: its ``trace`` (trace_id, release, environment) belongs to the
        request its events name (``request_id_of``: the AWS request id read from the body), else to
        the request running now if that one is unambiguous: a request the lifecycle got an INVOKE
        for (Lambda sends INVOKE only where requests run one at a time); the first one seen wins.
        On Managed Instances (no INVOKE, requests overlap) an envelope that names no request, or
        is not read, gives its trace to none: a failure event without the SDK's trace beats one
        with another request's.

        The body is read (at most ``LOOKUPS_PER_REQUEST`` times per request) unless the trace is
        the running request's again: an envelope can arrive before the INVOKE of its request was
        seen (``background`` mode), and the running request's trace, or its lack of one, would then
        be wrong. A request id not seen yet is kept until that request's INVOKE or records come."""
        req = self._current  # read without the lock: a stale value only means the long way below
        known = req.sdk_trace if req is not None else None
        trace = header.get("trace") if header else None
        if known is not None and isinstance(trace, dict) and trace.get("trace_id") == known["trace_id"]:
            return  # the running request's trace again (most posts): nothing to learn
        found = _trace_of(header)
        if found is None:
            return
        with self._lock:
            req = self._current
            if req is not None and req.sdk_trace is not None and req.sdk_trace["trace_id"] == found["trace_id"]:
                return  # the running request's trace again
            ask = request_id_of is not None and self._lookups < LOOKUPS_PER_REQUEST
            if ask:
                self._lookups += 1
        rid = self._named_request(request_id_of) if ask else None
        with self._lock:
            if rid is not None:
                req = self._requests.get(rid)
                if req is None:
                    self._early_traces.setdefault(rid, found)
                    while len(self._early_traces) > KEEP_EARLY_TRACES:
                        self._early_traces.popitem(last=False)
                elif req.sdk_trace is None:
                    req.sdk_trace = found
                return
            req = self._current
            if req is None or not req.invoked or req.sdk_trace is not None or req.runtime_done is not None:
                return
            req.sdk_trace = found

    @staticmethod
    def _named_request(request_id_of: Optional[Callable[[], Optional[str]]]) -> Optional[str]:
        try:
            return valid_request_id(request_id_of()) if request_id_of is not None else None
        except Exception:
            log.exception("reading the request id of an SDK envelope failed (survived)")
            return None

    # -- queries (log attribution) --------------------------------------------------------------

    def current_request_id(self) -> Optional[str]:
        """The request running now, or last (on-demand runs one at a time); None before any."""
        with self._lock:
            return self._current.request_id if self._current is not None else None

    def sdk_trace(self, request_id: str) -> Dict[str, str]:
        """The SDK's trace for ``request_id`` (trace_id, release, environment as its envelopes
        carried them); empty if none was seen."""
        with self._lock:
            req = self._requests.get(request_id)
            return dict(req.sdk_trace) if req is not None and req.sdk_trace else {}

    # -- waits and decisions for the lifecycle -------------------------------------------------

    def wait(self, request_id: str, deadline: float, kinds: Tuple[str, ...] = ("runtimeDone",)) -> bool:
        """Whether a record of ``kinds`` ("start", "runtimeDone", "report") arrived for
        ``request_id`` by ``deadline`` (monotonic)."""
        with self._lock:
            for _ in range(1_000_000):
                req = self._requests.get(request_id)
                if req is not None and any(getattr(req, _ATTR[kind]) is not None for kind in kinds):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return False

    def await_outcome(self, deadline: float) -> bool:
        """At SHUTDOWN: wait until the last request (with the requests that overlapped it, and a
        failed Init with no request) has the records to decide on, until ``deadline``. A failure
        decided from those records has been handed to ``on_failure`` when this returns True."""
        known = False
        with self._lock:
            for _ in range(1_000_000):
                if self._outcome_known():
                    known = True
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        if known:
            with self._deciding:  # the feeder holds it from the records' arrival until its callbacks ran
                pass
        return known

    def settle(self, request_id: str) -> Optional[Failure]:
        """Decide ``request_id`` now with the records at hand (once); its failure, if any, goes to
        ``on_failure`` before this returns."""
        with self._deciding:
            with self._lock:
                req = self._requests.get(request_id)
                failure = self._decide(req) if req is not None else None
            self._emit([failure] if failure else [])
        return failure

    def settle_all(self) -> List[Failure]:
        """Decide every request and the Init still undecided (at SHUTDOWN)."""
        failures: List[Failure] = []
        with self._deciding:
            with self._lock:
                for req in list(self._requests.values()):
                    failure = self._decide(req)
                    if failure is not None:
                        failures.append(failure)
                init = self._decide_init()
                if init is not None:
                    failures.append(init)
            self._emit(failures)
        return failures

    # -- internals (lock held) -----------------------------------------------------------------

    def _touch(self, rid: str) -> _Request:
        req = self._requests.get(rid)
        if req is None:
            req = _Request(rid, cold_start=not self._seen_any)
            req.sdk_trace = self._early_traces.pop(rid, None)  # its SDK's envelopes came first
            self._seen_any = True
            self._requests[rid] = req
            self._current = req
            self._lookups = 0
            while len(self._requests) > self._keep:
                self._requests.popitem(last=False)
        return req

    def _apply(self, record: Record, failures: List[Failure]) -> None:
        if isinstance(record, (InitRuntimeDone, InitReport)):
            if record.status != "success":
                self._init_status, self._init_error = record.status, record.error_type or self._init_error
            if isinstance(record, InitReport):
                self._init_report = record
                failure = self._decide_init()
                if failure is not None:
                    failures.append(failure)
            return
        rid = getattr(record, "request_id", None)
        if rid is None:
            return  # restore records, logsDropped: nothing to decide here
        req = self._touch(rid)
        if isinstance(record, Start):
            req.start = record
            req.xray = req.xray or record.tracing
        elif isinstance(record, RuntimeDone):
            req.runtime_done = record
            req.xray = req.xray or record.tracing
        elif isinstance(record, Report):
            req.report = record
            failure = self._decide(req)
            if failure is not None:
                failures.append(failure)

    def _log_line(self, line: LogLine) -> None:
        req = self._requests.get(line.request_id) if line.request_id else None
        if req is None or req.decided:
            return
        req.logs.append((line.timestamp, line.level, line.body[:LOG_LINE_CHARS]))

    def _decide(self, req: _Request) -> Optional[Failure]:
        if req.decided:
            return None
        done, report = req.runtime_done, req.report
        source = report if report is not None else done
        if source is None:
            return None
        req.decided = True
        # The lines serve only this decision's failure event: let them go (a request is kept long
        # after), deque and all: a shared one that keeps nothing takes its place.
        lines = tuple(req.logs)
        req.logs = NO_LOG_LINES
        # Report first: it is the final word (and a timeout's report may show a memory kill).
        status, error_type = source.status, source.error_type
        if report is not None and done is not None and error_type is None:
            error_type = done.error_type
        kind = classify(status, error_type, report)
        if kind == "exit" and self._init_status is not None:
            return None  # the invocation that met a failed Init (its report repeats the Init's error)
        if kind is None or kind not in self.kinds:
            return None
        return Failure(kind, req.request_id, status, error_type, req.cold_start, done, report, None, req.xray,
                       req.sdk_trace, lines)

    def _decide_init(self) -> Optional[Failure]:
        if self._init_decided or self._init_status is None or "init" not in self.kinds:
            return None
        self._init_decided = True
        return Failure("init", None, self._init_status, self._init_error, True, init_report=self._init_report)

    def _outcome_known(self) -> bool:
        if self._current is not None:
            # The running request, and every request that started beside it (on Managed Instances
            # requests overlap): each has the records to decide on, and so its log lines are in.
            return all(req.settled or req.decided for req in self._requests.values()
                       if req is self._current or req.start is not None)
        return self._init_report is not None or self._init_status is not None

    def _emit(self, failures: List[Failure]) -> None:
        for failure in failures:
            log.info("invocation failed: %s", failure)
            try:
                self.on_failure(failure)
            except Exception:
                log.exception("could not report %r (survived)", failure)


_ATTR = {"start": "start", "runtimeDone": "runtime_done", "report": "report"}
