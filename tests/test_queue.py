from __future__ import annotations

import threading
import time

from helpers import wait_until
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


def _getters(q: BoundedQueue, names: list, got: dict, timeout=None) -> list:
    """Start one getter per name, each waiting only after the one before it (a known order)."""
    threads = []
    for name in names:
        before = q._waiting
        thread = threading.Thread(target=lambda n=name: got.__setitem__(n, q.get(timeout=timeout)), daemon=True)
        thread.start()
        assert wait_until(lambda b=before: q._waiting == b + 1, 5)  # this getter waits now
        threads.append(thread)
    return threads


def test_the_newest_waiting_getter_takes_the_next_item_and_an_untimed_one_waits_for_it() -> None:
    q = BoundedQueue(max_items=10, max_bytes=10_000)
    got: dict = {}
    threads = _getters(q, ["old", "new"], got)
    first = req()
    assert q.put(first)
    threads[1].join(5)
    assert got == {"new": first}  # the one that began waiting last: warm thread, warm connection
    second = req()
    assert q.put(second)
    threads[0].join(5)
    assert got["old"] is second


def test_kick_returns_every_waiting_getter_empty_handed() -> None:
    q = BoundedQueue(max_items=10, max_bytes=10_000)
    got: dict = {}
    threads = _getters(q, ["a", "b"], got)
    q.kick()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert got == {"a": None, "b": None}
    assert q.put(req()) and q.get(timeout=None) is not None  # a later get is not affected
