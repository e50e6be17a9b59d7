"""Sender threads that drain the bounded queue upstream, with retries and a grace period."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, List, Optional

from .buffer import BoundedQueue
from .request import Request
from .stats import Stats
from .transport import Outcome, Result, Transport

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 30.0

# Called with (request, result) after every upstream reply (any status): the pipeline learns rate limits here.
ResponseHook = Callable[[Request, Result], None]
# Called with (request, reason) when the extension gives a request up.
DropHook = Callable[[Request, str], None]


class UpstreamHealth:
    """Consecutive-failure counter: a failing upstream is skipped for a jittered, growing grace period."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S,
                 rng: Optional[random.Random] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._clock = clock
        self.failures = 0
        # Jitter from the OS at each draw: a PRNG seeded in Init would be shared by every copy
        # restored from a SnapStart snapshot, and their retries would fall in step.
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self._until = 0.0  # monotonic end of the current grace period

    def failure(self) -> float:
        """Record a failure; returns the grace period in seconds (full jitter over the upper half).

        A failure inside the current grace period came from a request already in flight when it
        began (parallel senders): same outage, so it does not escalate the period again.
        """
        now = self._clock()
        with self._lock:
            if now < self._until:
                return self._until - now
            self.failures += 1
            ceiling = min(self.cap_s, self.base_s * (2 ** min(self.failures - 1, 20)))
            grace = ceiling * (0.5 + self._rng.random() / 2)
            self._until = now + grace
            return grace

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self._until = 0.0


class Forwarder:
    """A small pool of sender threads sharing one queue and one connection pool."""

    def __init__(self, queue: BoundedQueue, transport_: Transport, stats: Stats, senders: int,
                 max_attempts: int, on_response: Optional[ResponseHook] = None,
                 on_drop: Optional[DropHook] = None) -> None:
        self.queue = queue
        self.transport = transport_
        self.stats = stats
        self.senders = senders
        self.max_attempts = max_attempts
        self.on_response = on_response
        self.on_drop = on_drop
        self.health = UpstreamHealth()
        self._deadline: Optional[float] = None  # monotonic; set while a flush is bounded by a deadline
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        self._last_error_log = 0.0

    def start(self) -> None:
        for index in range(self.senders):
            thread = threading.Thread(target=self._run, name="sentry-ext-sender-%d" % index, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self.queue.cond:
            self.queue.cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight; False if ``timeout`` (s) ran out
        first or the upstream is in a grace period that outlasts it."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._deadline = deadline
        try:
            return self.queue.join(deadline)
        finally:
            self._deadline = None

    def _run(self) -> None:
        while not self._stop.is_set():
            req = None
            try:
                req = self.queue.get(timeout=1.0)
                if req is not None:
                    self._deliver(req)
            except Exception:  # a bug here must not kill the thread: log it and go on
                log.exception("sender thread error (survived)")
                if req is not None:
                    self._recover(req)

    def _recover(self, req: Request) -> None:
        """After a bug while delivering ``req``: never leave it in flight (a flush would wait for it
        forever); retry it up to max_attempts, then drop it as ``internal_sdk_error``."""
        try:
            if req.attempts < self.max_attempts:
                self.queue.requeue(req)  # a no-op if it was released before the error
            elif self.queue.done(req):
                self.stats.drop("internal_sdk_error")
                if self.on_drop is not None:
                    self.on_drop(req, "internal_sdk_error")
        except Exception:
            log.exception("sender thread error while recovering (survived)")

    def _deliver(self, req: Request) -> None:
        deadline = self._deadline
        remaining = None if deadline is None else deadline - time.monotonic()
        req.attempts += 1
        result = self.transport.send(req, read_timeout=remaining)
        if result.outcome == Outcome.STALE and req.attempts == 1:
            # A pooled connection that died while we were frozen: reconnect at once, no backoff.
            self.stats.incr("retried")
            result = self.transport.send(req, read_timeout=remaining)
        if result.status and self.on_response is not None:
            try:
                self.on_response(req, result)
            except Exception:  # upstream has answered: a bug in bookkeeping must not cause a resend
                log.exception("response hook error (survived)")
        outcome = result.outcome
        if outcome == Outcome.OK:
            self.health.success()
            self.queue.resume()
            self.stats.incr("forwarded")
            self.stats.incr("bytes_forwarded", len(req.body))
            self.queue.done(req)
            log.debug("forwarded %s (%d bytes) -> %d", req.upstream_path, len(req.body), result.status)
            return
        if outcome in (Outcome.SEND_ERROR, Outcome.RATE_LIMITED):
            self.health.success()  # upstream is reachable and answering
            self.queue.resume()
            self._give_up(req, "send_error" if outcome == Outcome.SEND_ERROR else "ratelimited_upstream",
                          result)
            return
        # RETRY or a STALE that persisted: back off, then try again or give up.
        if req.attempts >= self.max_attempts:
            reason = "send_error" if result.status else "network_error"
            self._give_up(req, reason, result)
            return
        grace = self.health.failure()
        self.stats.incr("retried")
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
