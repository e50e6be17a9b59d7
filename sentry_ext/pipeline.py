"""Wires queue, transport, sender threads, ingest server, telemetry listener and spool.

Imported only after registration: it pulls in urllib3, ssl and http.server.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from typing import Any, Callable, Dict, List, Optional, TypeVar

from .util import lean_imports

lean_imports.install()  # before urllib3 and http.server load (lean_imports.py)

from .delivery.queue import BoundedQueue  # noqa: E402
from .protocol.client_reports import ReportScheduler  # noqa: E402
from .config import Config  # noqa: E402
from .protocol.discards import Discards  # noqa: E402
from .awslambda.exec_model import SNAP_START  # noqa: E402
from .awslambda.extensions_api import is_reset  # noqa: E402
from .insight.failure_events import build_request  # noqa: E402
from .delivery.flush import FlushControl  # noqa: E402
from .delivery.forwarder import Forwarder  # noqa: E402
from .ingest.health import assess  # noqa: E402
from .ingest.server import IngestServer  # noqa: E402
from .ingest.limits import IngestLimiter  # noqa: E402
from .insight.invocations import Invocations  # noqa: E402
from .insight.failures import Failure  # noqa: E402
from .insight.log_router import LogRouter  # noqa: E402
from .insight.metrics import ReportMetrics  # noqa: E402
from .insight.transactions import build_request as build_transaction  # noqa: E402
from .insight.unfinished import Unfinished, UnfinishedTracker  # noqa: E402
from .protocol.rate_limits import RateLimits  # noqa: E402
from .delivery.request import Request  # noqa: E402
from .ingest.request_id import aws_request_id  # noqa: E402
from .delivery.spool import Spool  # noqa: E402
from .util.stats import Stats  # noqa: E402
from .awslambda.telemetry_listener import TelemetryListener  # noqa: E402
from .awslambda.telemetry_records import parse_batch  # noqa: E402
from .delivery.transport import Result, Transport  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

SPOOL_RESERVE_S = 0.15  # kept back from the SHUTDOWN drain to write the spool
# After a reset (SHUTDOWN timeout/failure), how long to wait for the failed request's last
# records (Lambda sends them within ~100 ms with 25 ms batching), at most a third of the window.
OUTCOME_WAIT_S = 0.5
REPORT_RESERVE_BYTES = 8192  # kept free in the spool for the client report of what did not fit


class Pipeline:
    """Everything between the SDK's POST and the upstream's reply."""

    def __init__(self, cfg: Config, ingest_sock: socket.socket, telemetry_sock: Optional[socket.socket],
                 flush_control: Optional[FlushControl] = None, telemetry_path: Optional[str] = None) -> None:
        assert cfg.dsn is not None
        self.cfg = cfg
        # The lifecycle loop's flush mode (shared, not copied): /health reports it.
        self.flush_control = flush_control or FlushControl.from_config(cfg)
        self.stats = Stats()
        self.queue = BoundedQueue(cfg.queue_max_items, cfg.queue_max_bytes)
        self.transport = Transport(cfg)
        # Rate limits learnt from upstream replies, and client reports for what we drop ourselves.
        self.limits = RateLimits()
        self.discards = Discards()
        self.reports = ReportScheduler(self.discards, self.queue, cfg.dsn, self.stats)
        self.ingest_limits = IngestLimiter(self.limits, self.discards, self.stats)
        self.forwarder = Forwarder(self.queue, self.transport, self.stats, cfg.senders, cfg.max_attempts,
                                   on_response=self._on_response, on_drop=self._on_drop,
                                   max_inflight=cfg.max_inflight)
        self.server = IngestServer(ingest_sock, cfg, self.queue, self.stats, self._health_extra)
        self.server.before_queue = self._before_queue
        self.server.accepted_headers = self.ingest_limits.accepted_headers
        self.server.on_drop = self._on_drop
        # Telemetry records in, failure decisions out (each made into an event for the queue). Only
        # POSTs on telemetry_path (the subscription's secret path) get here.
        self.invocations = Invocations(self._report_failure, cfg.failure_kinds)
        # Function logs (SENTRY_EXT_LOGS=on): the same records in, log envelopes out.
        self.log_router = LogRouter(cfg, self.submit, self.discards, self.stats,
                                    self.invocations.sdk_trace) if cfg.logs == "on" else None
        # What the SDK cannot send: a transaction for an invocation it never finished, Lambda's
        # report figures as trace metrics (None: turned off, no work at all).
        self.unfinished = (UnfinishedTracker(self._report_unfinished)
                           if cfg.unfinished_transactions == "on" else None)
        self.metrics = ReportMetrics(cfg, self.submit, self.invocations.sdk_trace) if cfg.metrics == "on" else None
        self.listener = (TelemetryListener(telemetry_sock, self.on_telemetry, self.stats, telemetry_path)
                         if telemetry_sock else None)
        self.spool = Spool(cfg.spool_dir, cfg.spool_max_bytes, cfg.spool_max_age_s, cfg.dsn.public_key)
        self.snapshot_pending = cfg.init_type == SNAP_START  # until after_restore

    def start(self) -> None:
        self.server.start()
        if self.listener is not None:
            self.listener.start()
        self.forwarder.start()
        self._load_spool()

    def _health_extra(self) -> Dict[str, Any]:
        depth = self.queue.depth()
        data = assess(self.forwarder.health.failures, depth["queued"] + depth["in_flight"],
                      self.cfg.queue_max_items, depth["bytes"], self.cfg.queue_max_bytes)
        data.update(flush_mode=self.flush_control.mode, upstream=self.cfg.dsn.masked() if self.cfg.dsn else None)
        return data

    def _before_queue(self, req: Request, header: Optional[Dict[str, Any]], decoded: Optional[bytes] = None) -> Any:
        """``decoded``: the body as the ingest decoded it for the header, when small (else None)."""
        # Periodic reports ride on ingest traffic: background mode never calls flush().
        self.reports.maybe_send()
        # Which request the envelope names: read from its body (decoded, up to 1 MiB) at most once,
        # and only if a tracker below cannot tell otherwise.
        # (A closure: wrapping a partial in functools.lru_cache cost ~5 us per post.)
        found: List[Optional[str]] = []

        def request_id_of() -> Optional[str]:
            if not found:
                found.append(aws_request_id(req, decoded))
            return found[0]

        # the SDK's trace for a failure event (and logs), of the request the envelope names
        self.invocations.note_envelope(header, request_id_of)
        if self.log_router is not None:
            self.log_router.note_sdk_envelope(req, header)  # the one-time duplicates hint
        if self.unfinished is not None:  # did the SDK send this request's transaction itself?
            self.unfinished.note_envelope(req, header, request_id_of, decoded)
        return self.ingest_limits(req)

    def on_telemetry(self, batch: Any) -> None:
        """One decoded Telemetry API batch (from the listener), emptied once parsed. Logs first: a
        request's log envelopes are queued before its runtimeDone reaches ``invocations`` and lets
        the lifecycle drain."""
        records = parse_batch(batch)
        if isinstance(batch, list):
            batch.clear()  # memory: the decoded JSON (~0.25 MiB per 1,000 records) is not needed past here
        lines = self.log_router.feed(records) if self.log_router is not None else None
        # Before ``invocations``: whoever waits on it for a record finds that record's transaction
        # and trace metrics already queued or pending.
        if self.unfinished is not None:
            self.unfinished.feed(records)
        if self.metrics is not None:
            self.metrics.feed(records)
        self.invocations.feed(records, lines)

    def invoked(self, event: Dict[str, Any]) -> None:
        """An INVOKE event (every flush mode): the request running from now on."""
        self.invocations.invoked(event.get("requestId"), event.get("tracing"))
        if self.unfinished is not None:
            self.unfinished.invoked(event)

    def waiting_in_next(self, waiting: bool) -> None:
        """The lifecycle starts or ends a wait in /event/next, where a freeze may come: round trips
        in flight during it are not timed into the estimate (forwarder.py)."""
        self.forwarder.waiting_in_next(waiting)

    def _report_failure(self, failure: Failure) -> None:
        self.stats.incr("failure_events")
        self.submit(build_request(failure, self.cfg))

    def _report_unfinished(self, item: Unfinished) -> None:
        self.stats.incr("unfinished_transactions")
        self.submit(build_transaction(item, self.invocations.sdk_trace(item.request_id), self.cfg))

    def _finish_insight(self, reason: Optional[str], deadline: float) -> None:
        """At SHUTDOWN: transactions of the invocations still undecided; the pending trace metrics,
        with the last request's report (it may still be on its way: wait briefly, as for logs)."""
        if self.unfinished is not None:
            self.unfinished.settle_all(reason)
        if self.metrics is None:
            return
        rid = self.invocations.current_request_id()
        now = time.monotonic()
        if rid is not None and self.invocations.wait(rid, now, ("start",)):  # telemetry works
            self.invocations.wait(rid, now + min(OUTCOME_WAIT_S, max(0.0, deadline - now) / 3), ("report",))
        self.metrics.flush()

    def submit(self, req: Request) -> bool:
        """Queue a request the extension made, as ingest queues an SDK's: rate limits first, and a
        drop is counted for client reports. False if it was dropped."""
        if self.ingest_limits(req) is not None:
            return False  # rate limited: counted by the limiter
        if not self.queue.put(req):
            self.stats.drop("queue_overflow")
            self._on_drop(req, "queue_overflow")
            return False
        return True

    def _on_response(self, req: Request, result: Result) -> None:
        self.limits.update(req.public_key, result.status, result.headers)
        if self.snapshot_pending:
            # A snap-start sandbox before its restore: the snapshot may be taken any moment now,
            # and a connection kept in it would lead nowhere in every restored copy. Closing them
            # is enough (after_restore rebuilds the pool and its TLS context).
            self.transport.close_connections()

    def _on_drop(self, req: Request, reason: str) -> None:
        self.discards.record_request(req, reason)
        self.reports.maybe_send()

    def _load_spool(self) -> None:
        loaded = self.spool.load()
        for req in loaded.expired:
            self.stats.drop("spool_expired")
            self.discards.record_request(req, "spool_expired")
        queued = 0
        for req in loaded.requests:
            req.attempts = 0  # a new sandbox, a new attempt budget
            if self.queue.put(req):
                queued += 1
            else:
                self.stats.drop("queue_overflow")
                self.discards.record_request(req, "queue_overflow")
        if queued or loaded.expired or loaded.corrupt_files:
            self.stats.incr("spool_loaded", queued)
            log.info("spool: %d request(s) from an earlier sandbox queued, %d expired, %d corrupt file(s)",
                     queued, len(loaded.expired), loaded.corrupt_files)

    def flush(self, timeout: float) -> bool:
        """Deliver everything queued and in flight, pending client reports included, within ``timeout`` seconds."""
        deadline = time.monotonic() + max(0.0, timeout)
        reported = self.reports.send() if self.discards.has_pending else True
        done = self.forwarder.flush(timeout)
        if done and not reported and self.reports.send():
            # The queue was full when the flush began (an overflow): now it has room for the report.
            done = self.forwarder.flush(deadline - time.monotonic())
        return done

    def after_invoke(self, request_id: str, deadline: float, telemetry_grace_s: float) -> bool:
        """``end`` mode after an INVOKE: wait for the runtime's runtimeDone, then drain, all before
        ``deadline`` (monotonic). False if telemetry looks broken: no platform.start within
        ``telemetry_grace_s`` (waiting for runtimeDone could then hold every invocation to its deadline)."""
        now = time.monotonic()
        # platform.start comes within ~25 ms of INVOKE.
        if not self.invocations.wait(request_id, min(deadline, now + telemetry_grace_s),
                                     ("start", "runtimeDone")) and time.monotonic() < deadline:
            return False
        if not self.invocations.wait(request_id, deadline):
            log.warning("no runtimeDone for %s before the deadline; calling next", request_id)
            self.stats.incr("runtime_done_missed")
            return True
        self.invocations.settle(request_id)  # a crash's event rides this drain
        if self.unfinished is not None:
            self.unfinished.settle(request_id)  # and its transaction
        t_done = time.monotonic()
        flushed = self.flush(min(deadline - t_done, self.cfg.flush_timeout_ms / 1000.0))
        elapsed_ms = (time.monotonic() - t_done) * 1000
        self.stats.incr("flushes")
        if not flushed:
            self.stats.incr("flushes_incomplete")
            log.info("flush for %s incomplete after %.0f ms; %d request(s) stay queued", request_id,
                     elapsed_ms, len(self.queue))
        else:
            log.debug("flushed %s in %.1f ms", request_id, elapsed_ms)
        return True

    def after_restore(self, why: str) -> None:
        """The sandbox was restored from a SnapStart snapshot: pooled upstream connections lead
        nowhere, and backoff deadlines and invocation times taken on the monotonic clock before
        the snapshot mean nothing now. Reconnect on the next send and start the bookkeeping afresh.
        (Wall-clock state, such as upstream rate limits, expires on its own.)"""
        self.snapshot_pending = False
        self.transport.drop_connections()
        self.forwarder.health.success()
        self.queue.resume()
        self.flush_control.forget()
        self.stats.incr("restores")
        log.info("restored from a snapshot (%s): upstream connections dropped, backoff cleared", why)

    def summary(self) -> str:
        """One log line with every counter."""
        return self.stats.summary()

    def shutdown(self, deadline: float, reason: Optional[str] = None) -> Dict[str, int]:
        """Report failures still undecided, drain until ``deadline`` (monotonic) less the spool
        reserve, spool the rest, stop. After a reset (``reason`` timeout or failure, any case), and with
        function logs on, first wait briefly for the last request's records. Never raises: a step
        that fails is logged with its traceback and counted in ``failed``, and the next runs.

        The spool is the last resort: /tmp survives only a reset of this same execution
        environment (after a timeout or a crash); after a spindown a new environment starts with
        an empty /tmp and whatever was spooled is gone.
        """
        failed: List[str] = []
        step = functools.partial(_step, failed)
        if is_reset(reason) or self.log_router is not None:
            # Function logs: the last request's lines and runtimeDone may still be on their way
            # (background mode calls next at once); returns at once when its records are in.
            now = time.monotonic()
            step("waiting for the last records", lambda: self.invocations.await_outcome(
                now + min(OUTCOME_WAIT_S, max(0.0, deadline - now) / 3)))
        step("settling failures", self.invocations.settle_all)
        step("unfinished transactions and trace metrics", lambda: self._finish_insight(reason, deadline))
        if self.log_router is not None:
            step("flushing function logs", self.log_router.flush)  # lines no runtimeDone has sent yet
        dropped_before = sum(self.stats.snapshot()["dropped"].values())
        if self.discards.has_pending:
            step("queueing client reports", self.reports.send)  # rides the drain (or the spool)
        drained = step("draining", lambda: self.forwarder.flush(deadline - SPOOL_RESERVE_S - time.monotonic()),
                       False)
        step("stopping the senders", self.forwarder.stop)
        in_flight = step("reading the queue", lambda: self.queue.depth()["in_flight"], 0)
        leftovers = step("taking what is left", self.queue.take_all, [])
        if in_flight:
            # Sent but unanswered: upstream may have them, and the spool will send them again.
            self.stats.incr("duplicates_at_risk", in_flight)
        written, unsaved = 0, []
        if leftovers:  # a spool that cannot be written hands everything back: lost, and counted below
            written, unsaved = step("spooling", lambda: self.spool.write(leftovers, deadline, REPORT_RESERVE_BYTES),
                                    (0, list(leftovers)))
        if unsaved:
            self.stats.drop("network_error", len(unsaved))
            step("counting the lost", lambda: [self.discards.record_request(req, "network_error") for req in unsaved])
            log.warning("lost %d unsent request(s) at shutdown (spool full, unwritable or out of time)", len(unsaved))
        if self.discards.has_pending:  # what was lost just now: its client report goes to the spool too
            reports = step("taking client reports", self.reports.take_requests, [])
            more, left = step("spooling client reports",
                              lambda: self.spool.write(reports, deadline + SPOOL_RESERVE_S / 2), (0, reports))
            if left:
                log.warning("could not spool %d client report(s): Sentry will not hear of what was lost here",
                            len(left))
            written += more
        if written:
            self.stats.incr("spooled", written)
            log.info("spooled %d unsent request(s) to %s (%d of them sent and unanswered): the last resort, "
                     "sent only if this execution environment is reset (after a timeout or crash) and "
                     "starts again; a spindown starts a new environment with an empty /tmp and they are lost",
                     written, self.cfg.spool_dir, min(in_flight, written))
        # Dropped while draining (rejected, rate limited, out of attempts), not counting the lost.
        dropped = sum(self.stats.snapshot()["dropped"].values()) - dropped_before - len(unsaved)
        return {"drained": int(drained), "spooled": written, "lost": len(unsaved), "dropped": dropped,
                "in_flight": in_flight, "failed": len(failed)}


def drain_verdict(outcome: Dict[str, int]) -> str:
    """The summary's ``drain=``: ``complete`` only when the SHUTDOWN drain (``shutdown``'s outcome)
    delivered everything; else what became of the rest."""
    dropped, spooled, lost, failed = outcome["dropped"], outcome["spooled"], outcome["lost"], outcome["failed"]
    if outcome["drained"] and not (spooled or lost or dropped or failed):
        return "complete"
    parts = ["%d dropped while draining" % dropped] if dropped else []
    if spooled:
        parts.append("%d spooled (sent only after a reset of this environment)" % spooled)
    if lost:
        parts.append("%d lost" % lost)
    if failed:
        parts.append("%d step(s) failed" % failed)
    return "incomplete(%s)" % ", ".join(parts or ["nothing left"])


def _step(failed: List[str], what: str, call: Callable[[], T], default: Optional[T] = None) -> T:
    """One step of the SHUTDOWN drain: an exception is logged with its traceback and noted in
    ``failed``, and ``default`` stands for its result, so the steps after it still run."""
    try:
        return call()
    except Exception:
        log.exception("shutdown: %s failed (survived; the drain goes on)", what)
        failed.append(what)
        return default  # type: ignore[return-value]
