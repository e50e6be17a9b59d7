"""A running estimate of the upstream round trip, as TCP keeps one (RFC 6298), plus its floor.

``timeout()`` is the retransmission-timeout analogue (smoothed RTT + 4 × its mean deviation): a
read timeout shorter than that would abandon requests the upstream is still working on, and a
request abandoned after it was sent may already have been accepted, so resending it risks a
duplicate. ``floor()`` is the smallest recent sample: the network's share of a round trip, free
of our own queueing (GIL, busy senders), which is what the concurrency controller scales with.
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, Optional

ALPHA = 0.125  # RFC 6298 gains
BETA = 0.25
FLOOR_SAMPLES = 64  # the floor is the minimum of this many recent samples


class RttEstimator:
    """Thread-safe: senders add samples, the forwarder reads the estimates."""

    def __init__(self, floor_samples: int = FLOOR_SAMPLES) -> None:
        self._lock = threading.Lock()
        self._srtt: Optional[float] = None
        self._rttvar = 0.0
        self._recent: Deque[float] = collections.deque(maxlen=floor_samples)
        self._floor: Optional[float] = None
        self.samples = 0

    def add(self, seconds: float) -> None:
        """One round trip, in seconds, of a request that got a reply (any status)."""
        if seconds < 0:
            return
        with self._lock:
            self.samples += 1
            if self._srtt is None:
                self._srtt = seconds
                self._rttvar = seconds / 2
            else:
                self._rttvar = (1 - BETA) * self._rttvar + BETA * abs(self._srtt - seconds)
                self._srtt = (1 - ALPHA) * self._srtt + ALPHA * seconds
            evicted = self._recent[0] if len(self._recent) == self._recent.maxlen else None
            self._recent.append(seconds)
            if self._floor is None or seconds <= self._floor:
                self._floor = seconds
            elif evicted is not None and evicted <= self._floor:
                self._floor = min(self._recent)

    @property
    def srtt(self) -> Optional[float]:
        return self._srtt

    def floor(self) -> Optional[float]:
        """The smallest of the recent round trips (None before the first reply)."""
        return self._floor

    def expected(self) -> Optional[float]:
        """How long a request started now should take, with some slack (srtt + 2 × deviation)."""
        with self._lock:
            return None if self._srtt is None else self._srtt + 2 * self._rttvar

    def timeout(self) -> Optional[float]:
        """The shortest read timeout that does not cut off a reply the upstream is still preparing."""
        with self._lock:
            return None if self._srtt is None else self._srtt + 4 * self._rttvar
