"""Sender threads that drain the bounded queue upstream, with retries and a grace period.

The number of threads follows the backlog and the round trip (``concurrency.py``); near a
deadline a request is started only if it can be answered before it (``rtt.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .backoff import BACKOFF_BASE_S, BACKOFF_CAP_S, UpstreamHealth  # noqa: F401 (re-exported)
from .queue import BoundedQueue
from .concurrency import ConcurrencyController, CpuShare
from .request import Request
from .rtt import RttEstimator
from ..util.stats import Stats
from .transport import Outcome, Result, Transport

log = logging.getLogger(__name__)

RETIRE_CHECK_MIN_S = 0.05  # an idle sender above the minimum looks again no sooner than this
MAX_BUGS_KEPT = 32  # distinct sender bugs whose traceback was logged (then forgotten, and logged again)

# Called with (request, result) after every upstream reply (any status): the pipeline learns rate limits here.
ResponseHook = Callable[[Request, Result], None]
# Called with (request, reason) when the extension gives a request up.
DropHook = Callable[[Request, str], None]


class Forwarder:
    """Sender threads sharing one queue and one connection pool: ``senders`` of them at least,
    up to ``max_inflight`` while a backlog and the round trip call for more (never more than
    ``max_inflight``: the controller lowers a larger ``senders`` to it)."""

    def __init__(self, queue: BoundedQueue, transport_: Transport, stats: Stats, senders: int,
                 max_attempts: int, on_response: Optional[ResponseHook] = None,
                 on_drop: Optional[DropHook] = None, max_inflight: Optional[int] = None) -> None:
        self.queue = queue
        self.transport = transport_
        self.stats = stats
        self.max_attempts = max_attempts
        self.on_response = on_response
        self.on_drop = on_drop
        self.health = UpstreamHealth()
        self.rtt = RttEstimator()
        self.controller = ConcurrencyController(senders, max_inflight or senders)
        self.cpu = CpuShare()
        self._deadline: Optional[float] = None  # monotonic; set while a flush is bounded by a deadline
        # Lambda freezes the sandbox only while the lifecycle waits in /event/next, and the
        # monotonic clock runs on through a freeze: a round trip in flight at any moment of such a
        # wait is no sample of the upstream's. ``_generation`` moves when a wait starts or ends.
        self._generation = 0
        self._in_next = False
        # Before the first reply: when each request in flight went out (on ``clock``), and in which
        # generation; a request unanswered for longer than a loopback takes says the upstream is far.
        self._sent_at: Dict[int, Tuple[float, int]] = {}
        self.clock: Callable[[], float] = time.monotonic  # round trips are timed on it (tests step it)
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._alive = 0  # threads started and not retired
        self._started = 0
        self._stopped = False  # a plain flag, read before every request (an Event's is_set is a Python call)
        self._last_error_log = 0.0
        self._spawn_failed = False
        self._bugs: Set[Optional[Tuple[str, str, int]]] = set()  # see _new_bug

    @property
    def senders(self) -> int:
        with self._lock:
            return self._alive

    def start(self) -> None:
        self.queue.on_backlog = self._on_backlog
        self.grow()

    def stop(self) -> None:
        self._stopped = True
        self.queue.on_backlog = None
        self.queue.kick()  # idle senders wait with no time limit: wake them to see the stop

    def waiting_in_next(self, waiting: bool) -> None:
        """The lifecycle starts (True) or ends (False) a wait in /event/next, during which the
        sandbox may be frozen: no round trip in flight during the wait is sampled (``_send``)."""
        self._in_next = waiting
        self._generation += 1

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight; False if ``timeout`` (s) ran out
        first or the upstream is in a grace period that outlasts it."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._deadline = deadline
        try:
            self.grow()  # a drain runs at the full concurrency the backlog calls for
            return self.queue.join(deadline)
        finally:
            self._deadline = None
            self.queue.hold(0.0)

    # -- the thread pool ----------------------------------------------------------------------

    def _on_backlog(self) -> None:
        # On the ingest thread that queued a request no idle sender was waiting for: one more at most.
        self.grow(1)

    def grow(self, limit: Optional[int] = None) -> int:
        """Start the sender threads the controller calls for (at most ``limit``); returns how many."""
        if self._stopped:
            return 0
        with self._lock:
            outstanding, floor = len(self.queue), self.rtt.floor()
            unanswered = self._unanswered_for() if floor is None else None
            if unanswered is not None:
                # No round trip measured yet, but a request has waited longer than a loopback
                # takes: the upstream is at least that far. The burst gets its connections now,
                # not one step per round trip (a first reply comes only after a handshake's
                # round trips and the request's). No CPU check: this is no stretched sample.
                floor, cpu = unanswered, 0.0
            # the CPU share is read only when more threads are wanted (it sums every thread's time)
            elif self.controller.need(outstanding, floor) > self._alive:
                cpu = self.cpu.read()
            else:
                cpu = 0.0
            level = self.controller.update(outstanding, floor, cpu)
            count = level - self._alive
            if limit is not None:
                count = min(count, limit)
            if count <= 0:
                return 0
            self._alive += count
            first = self._started
            self._started += count
            self._threads = [t for t in self._threads if t.is_alive()]
        started = 0
        for index in range(first, first + count):
            thread = threading.Thread(target=self._run, name="sentry-ext-sender-%d" % index, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # the sandbox's thread or memory limit: carry on with fewer
                with self._lock:
                    self._alive -= first + count - index
                if not self._spawn_failed:
                    self._spawn_failed = True
                    log.warning("cannot start another sender thread (%s); staying at %d", exc, self.senders)
                break
            with self._lock:
                self._threads.append(thread)
            started += 1
        self.stats.high("senders_peak", self.senders)
        return started

    def _retire(self) -> bool:
        """True if this idle thread is surplus to the controller's level (it then ends)."""
        with self._lock:
            level = self.controller.update(len(self.queue), self.rtt.floor())
            if self._alive > level:
                self._alive -= 1
                return True
            return False

    def _idle_wait(self) -> Optional[float]:
        """How long an idle sender waits for a request: with no time limit at or below the minimum
        (no wake-up while idle); above it, until the controller may lower the level and retire it."""
        with self._lock:
            if self._alive <= self.controller.minimum:
                return None
            return max(RETIRE_CHECK_MIN_S, self.controller.idle_left())

    def _run(self) -> None:
        while not self._stopped:
            req = None
            attempts = 0
            try:
                req = self.queue.get(timeout=self._idle_wait())
                if req is None:
                    if self._retire():
                        return
                    continue
                attempts = req.attempts
                self._deliver(req)
                req = None
                self.grow()  # a reply may have taught us the round trip a backlog is waiting on
            except Exception as exc:  # a bug here must not kill the thread: log it and go on
                if req is None:
                    log.exception("sender thread error (survived)")
                else:
                    self._recover(req, attempts, exc)

    def _recover(self, req: Request, attempts: int, exc: Exception) -> None:
        """After a bug while delivering ``req`` (which had made ``attempts`` before): never leave it
        in flight (a flush would wait for it forever); back off as after an upstream failure and
        retry it up to max_attempts, then drop it as ``internal_sdk_error``. A bug's traceback is
        logged once; its repeats get a line (one per 10 s)."""
        try:
            if req.attempts == attempts:
                req.attempts += 1  # the bug came before the send counted the attempt: count it here
            if self._new_bug(exc):
                log.error("sender thread error (survived) delivering %s, attempt %d/%d", req.upstream_path,
                          req.attempts, self.max_attempts, exc_info=exc)
            else:
                self._log_failure("sender thread error (survived) delivering %s, attempt %d/%d: %r",
                                  req.upstream_path, req.attempts, self.max_attempts, exc)
            if req.attempts < self.max_attempts:
                self.queue.pause_until(time.monotonic() + self.health.failure())
                self.queue.requeue(req)  # a no-op if it was released before the error
            elif self.queue.done(req):
                self.stats.drop("internal_sdk_error")
                if self.on_drop is not None:
                    self.on_drop(req, "internal_sdk_error")
        except Exception:
            log.exception("sender thread error while recovering (survived)")

    def _new_bug(self, exc: Exception) -> bool:
        """True the first time a bug (exception type and where it was raised) is seen."""
        tb = exc.__traceback__
        for _ in range(1000):  # to the innermost frame: where it was raised
            if tb is None or tb.tb_next is None:
                break
            tb = tb.tb_next
        where = (type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else None
        with self._lock:
            if where in self._bugs:
                return False
            if len(self._bugs) >= MAX_BUGS_KEPT:
                self._bugs.clear()
            self._bugs.add(where)
            return True

    def _read_timeout(self) -> Tuple[Optional[float], Optional[float]]:
        """(hold until, read timeout): near a deadline, start only what can be answered before it
        (else hold the queue until that deadline), and never cut a read timeout below what the
        upstream has been taking."""
        deadline = self._deadline
        if deadline is None:
            return None, None
        remaining = deadline - time.monotonic()
        expected = self.rtt.expected()
        if remaining <= 0 or (expected is not None and remaining < expected):
            return deadline, None
        floor = self.rtt.timeout()
        return None, remaining if floor is None else max(remaining, floor)

    def _unanswered_for(self) -> Optional[float]:
        """How long the oldest request in flight, sent in this generation outside a wait in
        /event/next, has gone unanswered, if that is longer than a loopback round trip; None
        otherwise (called under ``_lock``)."""
        if not self._sent_at or self._in_next:
            return None
        generation = self._generation
        starts = [at for at, gen in self._sent_at.values() if gen == generation]
        if not starts:
            return None
        waited = self.clock() - min(starts)
        return waited if waited >= self.controller.near_rtt_s else None

    def _send(self, req: Request, read_timeout: Optional[float]) -> Result:
        generation = None if self._in_next else self._generation
        started = self.clock()
        first = self.rtt.samples == 0
        if first:
            with self._lock:
                self._sent_at[id(req)] = (started, self._generation)
        try:
            result = self.transport.send(req, read_timeout=read_timeout)
        finally:
            if first:
                with self._lock:
                    self._sent_at.pop(id(req), None)
        if result.status:
            elapsed = self.clock() - started
            # Not a sample: a round trip in flight while the lifecycle waited in /event/next (the
            # sandbox may have been frozen meanwhile), or one longer than its read timeout allowed.
            if generation == self._generation and elapsed <= self.transport.read_timeout_for(read_timeout):
                self.rtt.add(elapsed)
            else:
                self.stats.incr("rtt_discarded")
                log.debug("round trip of %.0f ms not sampled (during an /event/next or past the read timeout)",
                          elapsed * 1000)
        return result

    def _deliver(self, req: Request) -> None:
        hold_until, read_timeout = self._read_timeout()
        if hold_until is not None:
            # Started now, it would still be in flight at the deadline (then frozen, or spooled
            # while upstream may accept it: a duplicate). It waits for the next drain instead.
            self.queue.hold(hold_until)
            self.queue.requeue(req)
            self.stats.incr("held_at_deadline")
            return
        req.attempts += 1
        result = self._send(req, read_timeout)
        if result.outcome == Outcome.STALE and req.attempts == 1:
            # A pooled connection that died while we were frozen: reconnect at once, no backoff.
            self.stats.incr("retried")
            if result.maybe_delivered:
                self.stats.incr("duplicates_at_risk")
                log.info("the connection failed after %s went out (%s); resending it may duplicate it upstream",
                         req.upstream_path, result.error)
            result = self._send(req, read_timeout)
        if result.status and self.on_response is not None:
            try:
                self.on_response(req, result)
            except Exception:  # upstream has answered: a bug in bookkeeping must not cause a resend
                log.exception("response hook error (survived)")
        outcome = result.outcome
        if outcome == Outcome.OK:
            self.health.success()
            self.queue.resume()
            self.stats.add(forwarded=1, bytes_forwarded=len(req.body))
            self.queue.done(req)
            log.debug("forwarded %s (%d bytes) -> %d", req.upstream_path, len(req.body), result.status)
            return
        if outcome in (Outcome.SEND_ERROR, Outcome.RATE_LIMITED):
            self.health.success()  # upstream is reachable and answering
            self.queue.resume()
            self._give_up(req, "send_error" if outcome == Outcome.SEND_ERROR else "ratelimited_upstream",
                          result)
            return
        # RETRY or a STALE that persisted: back off, then try again or give up. The failure counts
        # either way (/health reads it), so even one attempt per request shows an outage.
        grace = self.health.failure()
        if req.attempts >= self.max_attempts:
            reason = "send_error" if result.status else "network_error"
            self._give_up(req, reason, result)
            return
        self.stats.incr("retried")
        if result.maybe_delivered:
            self.stats.incr("duplicates_at_risk")
            self._log_failure("no whole reply for %s (%s; round trip so far: %s); resending it may duplicate "
                              "it upstream", req.upstream_path, result.error, _ms(self.rtt.srtt))
        self.queue.pause_until(time.monotonic() + grace)
        self._log_failure("upstream failed (%s); retrying in %.2fs (attempt %d/%d)",
                          result.error, grace, req.attempts, self.max_attempts)
        self.queue.requeue(req)

    def _give_up(self, req: Request, reason: str, result: Result) -> None:
        self.queue.done(req)
        self.stats.drop(reason)
        if reason != "ratelimited_upstream":
            self._log_failure("dropped %s after %d attempt(s): %s", req.upstream_path, req.attempts, result.error)
        if self.on_drop is not None and reason != "ratelimited_upstream":
            self.on_drop(req, reason)

    def _log_failure(self, msg: str, *args: object) -> None:
        # An upstream outage repeats the same error: one line per 10 s, details at debug level.
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)


def _ms(seconds: Optional[float]) -> str:
    return "unknown" if seconds is None else "%.0f ms" % (seconds * 1000)
