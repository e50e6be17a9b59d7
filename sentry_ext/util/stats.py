"""Thread-safe counters shown by ``/health`` and the shutdown summary."""

from __future__ import annotations

import threading
import time
from typing import Dict


class Stats:
    """Counters: received, forwarded, retried, bytes, dropped by reason, rejected by status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self._counts: Dict[str, int] = {}
        self._dropped: Dict[str, int] = {}
        self._rejected: Dict[str, int] = {}

    def add(self, **counts: int) -> None:
        """``incr`` for several counters at once (one lock)."""
        with self._lock:
            for name, n in counts.items():
                self._counts[name] = self._counts.get(name, 0) + n

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def high(self, name: str, value: int) -> None:
        """Keep ``name`` at the highest ``value`` seen (a high-water mark)."""
        with self._lock:
            if value > self._counts.get(name, 0):
                self._counts[name] = value

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` accepted requests lost for ``reason`` (client-report reason names)."""
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def reject(self, status: int) -> None:
        """Count a request answered with an error status at ingest."""
        with self._lock:
            key = str(status)
            self._rejected[key] = self._rejected.get(key, 0) + 1

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def dropped(self, reason: str) -> int:
        with self._lock:
            return self._dropped.get(reason, 0)

    def snapshot(self) -> Dict[str, object]:
        with self._lock:
            counts = dict(self._counts)
            return {
                "received": counts.pop("received", 0),
                "forwarded": counts.pop("forwarded", 0),
                "retried": counts.pop("retried", 0),
                "bytes_received": counts.pop("bytes_received", 0),
                "bytes_forwarded": counts.pop("bytes_forwarded", 0),
                "dropped": dict(self._dropped),
                "rejected": dict(self._rejected),
                **counts,
            }

    def summary(self) -> str:
        """One log line with every counter."""
        snap = self.snapshot()
        parts = []
        for key, value in snap.items():
            if isinstance(value, dict):
                inner = ",".join("%s:%s" % kv for kv in sorted(value.items())) or "0"
                parts.append("%s=%s" % (key, inner))
            else:
                parts.append("%s=%s" % (key, value))
        return " ".join(parts)
