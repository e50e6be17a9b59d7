"""Lambda's own figures from every ``platform.report`` as Sentry trace metrics, batched.

What no in-process SDK can measure: duration, billed duration, max memory used (the configured
size as an attribute), init duration on a cold start, restore duration after a SnapStart restore,
and an estimated cost (Lambda's published price per GB-second for the architecture, plus the price
per request; none on Managed Instances, billed differently). Each figure is one ``trace_metric``
item as the SDKs send them (sentry-python ``_metrics_batcher.py``): ``{timestamp, trace_id, name,
type, value, unit, attributes}`` in a payload ``{"version": 2, "items": [...]}``, under the item
header ``{"type": "trace_metric", "item_count": N, "content_type":
"application/vnd.sentry.items.trace-metric+json"}``, on the trace of the request's SDK (the one
its failure event and transaction use).

Batched: figures wait in ``pending`` (at most ``max_items``, the figures of one report never
split) and leave as one gzip'd envelope when the batch is full or older than ``MAX_AGE_S`` when a
report arrives, and at SHUTDOWN (``flush``). Not at every drain: one more upstream request per
invocation costs more than the figures are worth (a new TLS connection after each freeze: ~1.5 ms
of CPU, ~40 ms of post-runtime at 128 MB; tools/BENCHMARKS.md, issue 22).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from .. import __version__
from ..awslambda.exec_model import MANAGED_INSTANCES
from ..awslambda.telemetry_records import Record, Report
from ..config import Config
from ..delivery.request import Request
from ..protocol.client_reports import envelope_request
from .failure_events import SDK
from .function_logs import iso_to_epoch
from .transactions import trace_id_for

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.sentry.items.trace-metric+json"
PREFIX = "aws.lambda."
# (Report field, metric name after PREFIX, unit): every figure is a distribution.
FIGURES = (
    ("duration_ms", "duration", "millisecond"),
    ("billed_duration_ms", "billed_duration", "millisecond"),
    ("max_memory_used_mb", "max_memory_used", "megabyte"),
    ("init_duration_ms", "init_duration", "millisecond"),
    ("restore_duration_ms", "restore_duration", "millisecond"),
)
COST_NAME = PREFIX + "estimated_cost"
COST_UNIT = "usd"
# Lambda's on-demand prices (us-east-1; other regions differ by a few percent): USD per GB-second
# of billed duration by architecture, and per request.
PRICE_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
PRICE_PER_REQUEST = 0.0000002
MAX_ITEMS = 100  # figures per envelope (and pending at most)
MAX_AGE_S = 60.0  # a batch this old leaves with the next report
GZIP_LEVEL = 1


def estimated_cost(billed_ms: float, memory_mb: float, architecture: str) -> float:
    """USD for one invocation: billed GB-seconds at the architecture's price, plus the request."""
    price = PRICE_PER_GB_SECOND.get(architecture, PRICE_PER_GB_SECOND["x86_64"])
    return PRICE_PER_REQUEST + (billed_ms / 1000.0) * (memory_mb / 1024.0) * price


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _attr(name: str, value: Any) -> str:
    """``"name":{"value":...,"type":...}`` of one typed attribute, as JSON text (``name``: one of
    ours, plain ASCII: it needs no escaping)."""
    if isinstance(value, bool):
        typed = '{"value":%s,"type":"boolean"}' % ("true" if value else "false")
    elif isinstance(value, int):
        typed = '{"value":%d,"type":"integer"}' % value
    else:
        typed = '{"value":%s,"type":"string"}' % _encode(str(value))
    return '"%s":%s' % (name, typed)


class ReportMetrics:
    """Thread-safe: ``feed`` runs on the telemetry listener, ``flush`` on the lifecycle thread."""

    def __init__(self, cfg: Config, submit: Callable[[Request], bool],
                 sdk_trace: Callable[[str], Mapping[str, str]], clock: Callable[[], float] = time.monotonic,
                 max_items: int = MAX_ITEMS) -> None:
        self.cfg = cfg
        self.submit = submit
        self.sdk_trace = sdk_trace
        self._clock = clock
        self._max_items = max(1, max_items)
        self._lock = threading.Lock()
        self._pending: List[str] = []
        self._oldest = 0.0
        self._priced = cfg.init_type != MANAGED_INSTANCES
        base = {"aws_lambda.function_name": cfg.function_name or "unknown-function",
                "aws_lambda.architecture": cfg.architecture,
                "sentry.sdk.name": SDK["name"], "sentry.sdk.version": __version__}
        if cfg.function_version:
            base["aws_lambda.function_version"] = cfg.function_version
        if cfg.region:
            base["aws_lambda.region"] = cfg.region
        # What every figure repeats, encoded once (CPU: a report's figures share their attributes' text).
        self._base = ",".join(_attr(key, value) for key, value in base.items())

    def __len__(self) -> int:
        return len(self._pending)

    def feed(self, records: Iterable[Record]) -> None:
        """Typed records from one Telemetry batch: each ``platform.report`` becomes its figures."""
        for record in records:
            if isinstance(record, Report):
                self.add(record)

    def items(self, report: Report, now: Optional[float] = None) -> List[Dict[str, Any]]:
        """The trace metric items of one report, as dicts."""
        return [json.loads(text) for text in self.item_texts(report, now)]

    def item_texts(self, report: Report, now: Optional[float] = None) -> List[str]:
        """The trace metric items of one report, as JSON text (their attributes encoded once)."""
        trace = self.sdk_trace(report.request_id)
        trace_id = trace_id_for(trace, report.tracing)
        stamp = iso_to_epoch(report.time) or (time.time() if now is None else now)
        memory_mb = report.memory_size_mb or self.cfg.memory_mb or None
        parts = [self._base, _attr("aws_lambda.request_id", report.request_id),
                 _attr("aws_lambda.cold_start", report.init_duration_ms is not None
                       or report.restore_duration_ms is not None)]
        if memory_mb:
            parts.append(_attr("aws_lambda.memory_size_mb", int(memory_mb)))
        for key, name in (("release", "sentry.release"), ("environment", "sentry.environment")):
            value = trace.get(key) or getattr(self.cfg, key)
            if value:
                parts.append(_attr(name, value))
        head = '{"timestamp":%r,"trace_id":%s,"name":"' % (float(stamp), _encode(trace_id))
        tail = ',"attributes":{%s}}' % ",".join(parts)
        out = []
        for field, name, unit in FIGURES:
            value = getattr(report, field)
            if value is not None:  # finite and non-negative: telemetry_records checked it
                out.append('%s%s%s","type":"distribution","value":%r,"unit":"%s"%s'
                           % (head, PREFIX, name, float(value), unit, tail))
        if self._priced and report.billed_duration_ms is not None and memory_mb:
            cost = estimated_cost(report.billed_duration_ms, memory_mb, self.cfg.architecture)
            out.append('%s%s","type":"counter","value":%r,"unit":"%s"%s' % (head, COST_NAME, cost, COST_UNIT, tail))
        return out

    def add(self, report: Report) -> None:
        """Queue the figures of ``report``; a full or old batch leaves now."""
        new = self.item_texts(report)
        if not new:
            return
        now = self._clock()
        with self._lock:
            full = len(self._pending) + len(new) > self._max_items
            if not full:
                if not self._pending:
                    self._oldest = now
                self._pending.extend(new)
            due = full or now - self._oldest >= MAX_AGE_S
        if due:
            self.flush()
            if full:
                with self._lock:
                    self._oldest = now
                    self._pending.extend(new[:self._max_items])

    def flush(self) -> bool:
        """Submit the pending figures as one envelope; False if there were none or it was dropped."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return False
        try:
            req = metrics_request(batch, self.cfg)
        except Exception:
            log.exception("could not build a trace metric envelope of %d figures (survived)", len(batch))
            return False
        return self.submit(req)


def metrics_request(items: List[str], cfg: Config) -> Request:
    """One envelope (gzip'd) with one ``trace_metric`` item holding ``items`` (JSON texts)."""
    assert cfg.dsn is not None
    payload = ('{"version":2,"items":[%s]}' % ",".join(items)).encode("utf-8")
    item_header = {"type": "trace_metric", "item_count": len(items), "content_type": CONTENT_TYPE,
                   "length": len(payload)}
    header = {"sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body = b"%s\n%s\n%s\n" % (json.dumps(header, separators=(",", ":")).encode("ascii"),
                              json.dumps(item_header, separators=(",", ":")).encode("ascii"), payload)
    comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return envelope_request(cfg.dsn, cfg.dsn.public_key, comp.compress(body) + comp.flush(), "gzip")
