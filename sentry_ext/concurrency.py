"""How many sender threads (requests in flight) the backlog and the round trip call for.

A pure rule with an injected clock; the forwarder starts and retires threads to follow it.

- A thread spends a request's round trip waiting on the network and only ``request_cpu_s`` of it
  on the CPU (one GIL), so more than ``rtt_floor / request_cpu_s`` threads cannot overlap any more
  waiting: on loopback (round trip ≈ CPU) extra threads only contend, at 80 ms each one more
  request in flight is one more request per round trip.
- No more threads than requests outstanding (queued + in flight): a handful of envelopes never
  fans out to more connections than it has requests.
- Between ``minimum`` (``SENTRY_EXT_SENDERS``) and ``cap`` (``SENTRY_EXT_MAX_INFLIGHT``).
- It rises at once and falls only after ``idle_s`` with less work: a function that bursts every
  invocation keeps its threads (and their warm connections) instead of re-growing each time.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

REQUEST_CPU_S = 0.001  # CPU (GIL time) one forwarded request takes, TLS included, rounded up
IDLE_S = 5.0


class ConcurrencyController:
    """Not thread-safe by itself: the forwarder calls it under its own lock."""

    def __init__(self, minimum: int, cap: int, request_cpu_s: float = REQUEST_CPU_S, idle_s: float = IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.minimum = max(1, min(minimum, cap))
        self.request_cpu_s = request_cpu_s
        self.idle_s = idle_s
        self._clock = clock
        self.level = self.minimum
        self._busy_at = clock()  # last time the work called for the current level

    def need(self, outstanding: int, rtt_floor: Optional[float]) -> int:
        """Threads worth having right now (no memory of the past)."""
        if rtt_floor is None:  # no reply seen yet: no evidence that more threads would help
            return self.minimum
        overlap = max(1, math.ceil(rtt_floor / self.request_cpu_s))
        return max(self.minimum, min(self.cap, outstanding, overlap))

    def update(self, outstanding: int, rtt_floor: Optional[float]) -> int:
        """The level to run at now: raised at once, lowered after ``idle_s`` of less work."""
        now = self._clock()
        need = self.need(outstanding, rtt_floor)
        if need >= self.level:
            self.level = need
            self._busy_at = now
        elif now - self._busy_at >= self.idle_s:
            self.level = need
            self._busy_at = now
        return self.level
