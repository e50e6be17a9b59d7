from __future__ import annotations

import threading
import time

from sentry_ext.delivery.queue import BoundedQueue
from sentry_ext.delivery.request import Request


def req(n: int = 10) -> Request:
    return Request(upstream_path="/api/1/envelope/", headers={}, body=b"x" * n, public_key="k")


def test_caps_by_items_and_bytes() -> None:
    q = BoundedQueue(max_items=2, max_bytes=10_000)
    assert q.put(req()) and q.put(req())
    assert not q.put(req())
    q2 = BoundedQueue(max_items=100, max_bytes=1000)
    assert q2.put(req(500))
    assert not q2.put(req(500))  # 2 * (500 + overhead) > 1000


def test_in_flight_counts_until_done_and_join() -> None:
    q = BoundedQueue(max_items=1, max_bytes=10_000)
    first = req()
    assert q.put(first)
    taken = q.get(timeout=1)
    assert taken is first
    assert not q.put(req())  # still in flight: memory is still held
    assert not q.join(time.monotonic() + 0.01)
    threading.Timer(0.05, q.done, args=(taken,)).start()
    assert q.join(time.monotonic() + 5)
    assert q.put(req())


def test_requeue_goes_to_front_and_pause_holds_getters() -> None:
    q = BoundedQueue(max_items=10, max_bytes=10_000)
    a, b = req(1), req(2)
    q.put(a)
    q.put(b)
    got = q.get(timeout=1)
    assert got is a
    q.requeue(a)
    q.pause_until(time.monotonic() + 0.2)
    t0 = time.monotonic()
    assert q.get(timeout=1) is a
    assert time.monotonic() - t0 >= 0.15
    # a pause that outlasts the join deadline ends the join at once
    q.requeue(a)
    q.pause_until(time.monotonic() + 10)
    t0 = time.monotonic()
    assert not q.join(time.monotonic() + 5)
    assert time.monotonic() - t0 < 1


def test_take_all_closes_and_late_done_is_harmless() -> None:
    q = BoundedQueue(max_items=10, max_bytes=10_000)
    q.put(req())
    q.put(req())
    flying = q.get(timeout=1)
    assert flying is not None
    taken = q.take_all()
    assert len(taken) == 2 and taken[0] is flying
    q.done(flying)
    q.requeue(flying)
    assert len(q) == 0 and not q.put(req())
