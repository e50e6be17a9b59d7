"""The concurrency controller and the round-trip estimator, as units with an injected clock."""

from __future__ import annotations

from typing import List

from helpers import FakeClock
from sentry_ext.delivery.concurrency import ConcurrencyController
from sentry_ext.delivery.rtt import RttEstimator


def test_grows_under_backlog_with_a_distant_upstream_and_never_exceeds_the_cap() -> None:
    clock = FakeClock(1000.0)
    ctl = ConcurrencyController(minimum=4, cap=64, request_cpu_s=0.001, idle_s=5.0, clock=clock)
    assert ctl.update(outstanding=0, rtt_floor=0.08) == 4          # idle: the minimum
    assert ctl.update(outstanding=3, rtt_floor=0.08) == 4          # a handful: the idle minimum covers it
    assert ctl.update(outstanding=30, rtt_floor=0.08) == 30        # one request in flight per outstanding one
    levels: List[int] = []
    for outstanding in (100, 300, 1000, 100000):
        levels.append(ctl.update(outstanding, rtt_floor=0.2))
    assert levels == [64, 64, 64, 64]                              # capped
    assert ctl.update(10 ** 9, rtt_floor=10.0) == 64


def test_does_not_grow_before_a_round_trip_is_known_or_when_the_upstream_is_near() -> None:
    ctl = ConcurrencyController(minimum=4, cap=64, request_cpu_s=0.001, clock=FakeClock(1000.0))
    assert ctl.update(outstanding=500, rtt_floor=None) == 4        # no reply yet: no evidence
    # loopback: the round trip is about the CPU a request takes, so threads would only contend
    assert ctl.update(outstanding=500, rtt_floor=0.0004) == 4
    assert ctl.update(outstanding=500, rtt_floor=0.012) == 12      # a nearby relay: a few more


def test_shrinks_only_after_being_idle_for_idle_s() -> None:
    clock = FakeClock(1000.0)
    ctl = ConcurrencyController(minimum=2, cap=64, request_cpu_s=0.001, idle_s=5.0, clock=clock)
    assert ctl.update(300, 0.08) == 64
    clock.now += 4.9
    assert ctl.update(0, 0.08) == 64                               # a short lull keeps the threads
    clock.now += 0.2
    assert ctl.update(0, 0.08) == 2                                # idle for 5 s: back to the minimum
    assert ctl.update(20, 0.08) == 20                              # and up again at once
    clock.now += 6
    assert ctl.update(5, 0.08) == 5                                # falls to what is still needed


def test_minimum_above_the_cap_is_lowered_to_it() -> None:
    ctl = ConcurrencyController(minimum=32, cap=8, clock=FakeClock(1000.0))
    assert ctl.minimum == 8 and ctl.update(0, None) == 8 and ctl.update(1000, 1.0) == 8


def test_rtt_estimate_follows_the_upstream_and_its_floor_forgets_old_samples() -> None:
    rtt = RttEstimator(floor_samples=4)
    assert rtt.floor() is None and rtt.timeout() is None and rtt.expected() is None
    for _ in range(20):
        rtt.add(0.08)
    assert abs((rtt.srtt or 0) - 0.08) < 1e-9
    timeout = rtt.timeout()
    assert timeout is not None and 0.08 <= timeout < 0.09          # deviation has decayed
    rtt.add(0.3)                                                   # one slow reply widens the timeout
    widened = rtt.timeout()
    assert widened is not None and widened > 0.2
    assert (rtt.expected() or 0) < widened
    assert rtt.floor() == 0.08
    for _ in range(4):
        rtt.add(0.2)                                               # the upstream got slower for good
    assert rtt.floor() == 0.2
    rtt.add(0.001)
    assert rtt.floor() == 0.001


def test_no_growth_while_the_cpu_is_the_limit() -> None:
    ctl = ConcurrencyController(minimum=4, cap=64, request_cpu_s=0.001, clock=FakeClock(1000.0))
    assert ctl.update(300, 0.08, cpu_share=0.95) == 4              # one GIL already busy: threads would contend
    assert ctl.update(300, 0.08, cpu_share=None) == 4              # unknown: wait for a measurement
    assert ctl.update(300, 0.08, cpu_share=0.2) == 64


def test_cpu_share_over_windows_with_injected_clocks() -> None:
    from sentry_ext.delivery.concurrency import CpuShare

    wall, cpu = FakeClock(1000.0), FakeClock(1000.0)
    share = CpuShare(window_s=0.02, clock=wall, cpu=cpu)
    assert share.read() is None                                    # no window measured yet
    wall.now += 0.025
    cpu.now += 0.01875
    assert abs((share.read() or 0) - 0.75) < 1e-9
    wall.now += 0.01
    assert abs((share.read() or 0) - 0.75) < 1e-9                  # between windows: the last value
    wall.now += 5.0                                                # a quiet spell (or a freeze): low share
    cpu.now += 0.5
    assert abs((share.read() or 0) - 0.5 / 5.01) < 1e-9
