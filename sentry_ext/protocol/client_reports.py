"""Sends pending discard counts upstream as client_report envelopes on the normal queue, batched."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, List, Optional

from .. import __version__
from ..delivery.queue import BoundedQueue
from .discards import Discards
from .dsn import Dsn
from ..delivery.request import Request
from ..util.stats import Stats

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 30.0  # at most one periodic report per this many seconds (flush/shutdown add theirs)
CLIENT = "sentry-lambda-extension/" + __version__


def envelope_request(dsn: Dsn, key: str, body: bytes, encoding: Optional[str] = None) -> Request:
    """An envelope the extension made itself, authenticated for ``key`` like an SDK's; ``encoding``
    names the body's ``content-encoding`` (``gzip``) when it is compressed."""
    headers = {
        "content-type": "application/x-sentry-envelope",
        "x-sentry-auth": "Sentry sentry_key=%s, sentry_version=7, sentry_client=%s" % (key, CLIENT),
        "user-agent": CLIENT,
    }
    if encoding:
        headers["content-encoding"] = encoding
    return Request(upstream_path="/api/%s/envelope/" % dsn.project_id, headers=headers, body=body,
                   public_key=key)


def report_request(dsn: Dsn, key: str, payload: bytes) -> Request:
    """A standalone envelope holding one client_report item, authenticated for ``key``."""
    item_header = json.dumps({"type": "client_report", "length": len(payload)}, separators=(",", ":"))
    return envelope_request(dsn, key, b"{}\n" + item_header.encode("ascii") + b"\n" + payload + b"\n")


class ReportScheduler:
    """Turns pending discard counts into client_report envelopes: periodically (rate-limited) and on demand."""

    def __init__(self, discards: Discards, queue: BoundedQueue, dsn: Dsn, stats: Optional[Stats] = None,
                 interval_s: float = REPORT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.discards = discards
        self.queue = queue
        self.dsn = dsn
        self.stats = stats
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()  # the first periodic report waits a full interval, batching early drops

    def maybe_send(self) -> None:
        """Queue reports if counts are pending and the last one went out ``interval_s`` ago (cheap when not)."""
        if not self.discards.has_pending or self._clock() - self._last < self.interval_s:
            return
        with self._lock:
            if self._clock() - self._last < self.interval_s:
                return  # another thread just did it
            self._last = self._clock()
        self.send()

    def send(self) -> bool:
        """Queue every pending report now; False if the queue had no room (those counts stay pending)."""
        self._last = self._clock()
        return self._drain(self.queue.put)

    def take_requests(self) -> List[Request]:
        """Every pending report as a request, out of the counts (for the spool, once the queue is closed)."""
        taken: List[Request] = []
        self._drain(lambda req: taken.append(req) is None)
        return taken

    def _drain(self, sink: Callable[[Request], bool]) -> bool:
        for key in self.discards.pending_keys():
            for _ in range(1000):  # each round takes counts out, so this ends long before
                payload = self.discards.take_report(key)
                if payload is None:
                    break
                if not sink(report_request(self.dsn, key, payload)):
                    self.discards.restore(key, payload)
                    log.debug("no room in the queue for a client report; kept for later")
                    return False
                if self.stats is not None:
                    # Report envelopes are counted in "forwarded"/"dropped" like any request: say how many.
                    self.stats.incr("client_reports")
                log.debug("queued a client report for key %s… (%d bytes)", key[:4], len(payload))
        return True
