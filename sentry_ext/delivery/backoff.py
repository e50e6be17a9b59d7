"""A failing upstream is skipped for a jittered, growing grace period (the forwarder's health)."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 30.0


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
