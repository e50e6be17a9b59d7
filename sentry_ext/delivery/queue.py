"""A queue bounded by item count and bytes, with in-flight tracking for ``join``."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Deque, Dict, List, Optional

from .request import Request


class _LastInFirstOut(threading.Condition):
    """A condition whose ``notify`` wakes the waiter that began waiting last. Senders wait on the
    queue: the one that finished most recently takes the next request (its stack, its connection
    and the CPU's caches are warm), and the threads a past burst left idle stay idle, so the
    forwarder can retire them (``threading.Condition`` wakes the longest-waiting one: every
    request went to a different thread and none was ever idle for long)."""

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters  # type: ignore[attr-defined]
        while waiters and n > 0:
            waiter = waiters.pop()  # the newest; a waiter that timed out removes itself (wait's finally)
            try:
                waiter.release()
            except RuntimeError:  # already released
                continue
            n -= 1


class BoundedQueue:
    """FIFO bounded by items and bytes; an item counts against the caps until ``done``."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: Deque[Request] = collections.deque()
        self._in_flight: List[Request] = []
        self._bytes = 0
        self._lock = lock = threading.Lock()  # ``with self._lock`` (C): ``with self.cond`` is the same, in Python
        # Two conditions on one lock: a put wakes one sender, not all of them (each needless
        # wake-up costs a GIL hand-off the ingest threads wait behind), and only a flush waits
        # for the queue to go idle.
        self.cond = _LastInFirstOut(lock)   # getters: an item (or a resume) is there
        self._idle = threading.Condition(lock)  # join: nothing queued or in flight, or a pause changed
        self._paused_until = 0.0  # monotonic; getters wait while upstream is in its grace period
        self._held_until = 0.0  # monotonic; getters wait: too close to a deadline to start a request
        self._waiting = 0  # getters blocked in ``get``
        self._kicks = 0  # ``kick`` calls: a getter waiting through one returns None
        self._closed = False
        # Called (outside the lock) after a put that found more items queued than idle getters.
        self.on_backlog: Optional[Callable[[], None]] = None

    def put(self, req: Request) -> bool:
        """Queue ``req``; returns False if the item or byte cap would be exceeded."""
        with self._lock:
            if self._closed:
                return False
            size = req.size
            if len(self._items) + len(self._in_flight) >= self.max_items or self._bytes + size > self.max_bytes:
                return False
            self._items.append(req)
            self._bytes += size
            self.cond.notify()
            starved = len(self._items) > self._waiting
        if starved and self.on_backlog is not None:
            self.on_backlog()
        return True

    def get(self, timeout: Optional[float]) -> Optional[Request]:
        """Take the oldest item, waiting up to ``timeout`` (and past any pause; None: until an
        item comes or the queue closes, with no wake-up meanwhile); None if none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            kicks = self._kicks
            while True:
                now = time.monotonic()
                if self._closed or kicks != self._kicks or (deadline is not None and now >= deadline):
                    return None
                until = max(self._paused_until, self._held_until)
                if self._items and now >= until:
                    req = self._items.popleft()
                    self._in_flight.append(req)
                    return req
                wait = None if deadline is None else deadline - now
                if self._items:
                    wait = until - now if wait is None else min(wait, until - now)
                self._waiting += 1
                try:
                    self.cond.wait(None if wait is None else max(wait, 0.001))
                finally:
                    self._waiting -= 1

    def kick(self) -> None:
        """Make every getter waiting now return None (its owner has something else to check)."""
        with self._lock:
            self._kicks += 1
            self.cond.notify_all()

    def _release(self, req: Request) -> bool:
        # take_all() may have handed the item to the spool already
        for index, held in enumerate(self._in_flight):
            if held is req:
                del self._in_flight[index]
                return True
        return False

    def done(self, req: Request) -> bool:
        """Release an item taken with ``get`` (delivered or dropped); False if it was not in flight."""
        with self._lock:
            released = self._release(req)
            if released:
                self._bytes -= req.size
            if not self._in_flight:  # idle now, or only paused items left: join re-checks either way
                self._idle.notify_all()
            return released

    def requeue(self, req: Request) -> None:
        """Put an in-flight item back at the front (it keeps its place in the caps)."""
        with self._lock:
            if self._release(req) and not self._closed:
                self._items.appendleft(req)
                self.cond.notify()
            self._idle.notify_all()

    def pause_until(self, until: float) -> None:
        """Hold back ``get`` until the monotonic time ``until`` (upstream grace period)."""
        with self._lock:
            self._paused_until = max(self._paused_until, until)
            self._idle.notify_all()

    def hold(self, until: float) -> None:
        """Hold back ``get`` until the monotonic time ``until`` (a deadline too close to start a
        request before it); ``hold(0)`` ends it. Unlike a pause, a success does not end it."""
        with self._lock:
            self._held_until = until
            if not until:
                self.cond.notify_all()
            self._idle.notify_all()

    def resume(self) -> None:
        """End a pause early (upstream answered again); cheap when there is none."""
        with self._lock:
            if self._paused_until:
                self._paused_until = 0.0
                self.cond.notify_all()
                self._idle.notify_all()

    def join(self, deadline: float) -> bool:
        """Wait until nothing is queued or in flight, or until ``deadline`` (monotonic), or until a
        pause reaches past the deadline; returns True only when everything was delivered."""
        with self._lock:
            while self._items or self._in_flight:
                now = time.monotonic()
                until = max(self._paused_until, self._held_until)
                if now >= deadline or (self._items and not self._in_flight and until >= deadline):
                    return False
                self._idle.wait(deadline - now)
            return True

    def take_all(self) -> List[Request]:
        """Close the queue and hand back everything queued or in flight (for the spool)."""
        with self._lock:
            self._closed = True
            taken = list(self._in_flight) + list(self._items)
            self._items.clear()
            self._in_flight.clear()
            self._bytes = 0
            self.cond.notify_all()
            self._idle.notify_all()
            return taken

    def depth(self) -> Dict[str, int]:
        with self._lock:
            return {"queued": len(self._items), "in_flight": len(self._in_flight), "bytes": self._bytes}

    def __len__(self) -> int:
        with self._lock:
            return len(self._items) + len(self._in_flight)
