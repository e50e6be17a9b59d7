"""How many sender threads (requests in flight) the backlog and the round trip call for.

A pure rule with an injected clock; the forwarder starts and retires threads to follow it.

- A thread spends a request's round trip waiting on the network and only ``request_cpu_s`` of it
  on the CPU (one GIL), so more than ``rtt_floor / request_cpu_s`` threads cannot overlap any more
  waiting: on loopback (round trip ≈ CPU) extra threads only contend, at 80 ms each one more
  request in flight is one more request per round trip.
- Below ``NEAR_RTT_S`` the minimum serves: 4 threads there forward 400+ requests/s, and round
  trips that short are mostly our own GIL contention (a loopback burst stretches them to 5-10 ms),
  which more threads would only make worse.
- No more threads than requests outstanding (queued + in flight): a handful of envelopes never
  fans out to more connections than it has requests.
- Between ``minimum`` (``SENTRY_EXT_SENDERS``) and ``cap`` (``SENTRY_EXT_MAX_INFLIGHT``).
- It rises at once and falls only after ``idle_s`` with less work: a function that bursts every
  invocation keeps its threads (and their warm connections) instead of re-growing each time.
- It does not rise while the process is already using ``CPU_BUSY`` of a core (one GIL): then the
  round trips it measures are stretched by our own contention (a loopback burst, where ingest and
  senders share the GIL), not by the network, and more threads would only add to it.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

REQUEST_CPU_S = 0.001  # CPU (GIL time) one forwarded request takes, TLS included, rounded up
NEAR_RTT_S = 0.01  # an upstream nearer than this is served by the minimum (see below)
IDLE_S = 5.0
CPU_BUSY = 0.7  # share of one core above which more threads cannot help
CPU_WINDOW_S = 0.02  # the CPU share is measured over windows this long


class ConcurrencyController:
    """Not thread-safe by itself: the forwarder calls it under its own lock."""

    def __init__(self, minimum: int, cap: int, request_cpu_s: float = REQUEST_CPU_S, idle_s: float = IDLE_S,
                 clock: Callable[[], float] = time.monotonic, near_rtt_s: float = NEAR_RTT_S) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.minimum = max(1, min(minimum, cap))
        self.request_cpu_s = request_cpu_s
        self.near_rtt_s = near_rtt_s
        self.idle_s = idle_s
        self._clock = clock
        self.level = self.minimum
        self._busy_at = clock()  # last time the work called for the current level

    def need(self, outstanding: int, rtt_floor: Optional[float]) -> int:
        """Threads worth having right now (no memory of the past)."""
        if rtt_floor is None or rtt_floor < self.near_rtt_s:  # no evidence that more threads would help
            return self.minimum
        overlap = max(1, math.ceil(rtt_floor / self.request_cpu_s))
        return max(self.minimum, min(self.cap, outstanding, overlap))

    def update(self, outstanding: int, rtt_floor: Optional[float], cpu_share: Optional[float] = 0.0) -> int:
        """The level to run at now: raised at once (unless ``cpu_share`` of a core, None for
        unknown, says the CPU is the limit), lowered after ``idle_s`` of less work."""
        now = self._clock()
        need = self.need(outstanding, rtt_floor)
        if need > self.level and (cpu_share is None or cpu_share >= CPU_BUSY):
            need = self.level
        if need >= self.level:
            self.level = need
            self._busy_at = now
        elif now - self._busy_at >= self.idle_s:
            self.level = need
            self._busy_at = now
        return self.level


    def idle_left(self) -> float:
        """Seconds until the level may next fall: an idle thread above ``minimum`` needs to look
        whether it is surplus only then."""
        return self._busy_at + self.idle_s - self._clock()


class CpuShare:
    """The share of one core this process used over the last window of at least ``window_s``
    (injected clocks); ``read`` is cheap between windows (it returns the last value)."""

    def __init__(self, window_s: float = CPU_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.window_s = window_s
        self._clock = clock
        self._cpu = cpu
        self._t0 = clock()
        self._c0 = cpu()
        self._share: Optional[float] = None

    def read(self) -> Optional[float]:
        """None until the first window is complete."""
        now = self._clock()
        elapsed = now - self._t0
        if elapsed >= self.window_s:
            used = self._cpu()
            self._share = (used - self._c0) / elapsed
            self._t0, self._c0 = now, used
        return self._share
