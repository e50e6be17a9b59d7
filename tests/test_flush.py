"""FlushControl: the per-invocation flush decision, on a fake clock."""

from __future__ import annotations

import logging
from typing import List

import pytest

from helpers import FakeClock
from sentry_ext.config import load
from sentry_ext.delivery.flush import FlushControl, FlushDecision

END, BACKGROUND = FlushDecision.END, FlushDecision.BACKGROUND


def decisions(control: FlushControl, clock: FakeClock, times: List[float]) -> List[FlushDecision]:
    out = []
    for t in times:
        clock.now = t
        out.append(control.decide())
    return out


def test_fixed_modes_never_change_their_decision() -> None:
    clock = FakeClock()
    assert decisions(FlushControl("end", 2, 10.0, clock), clock, [0, 0.1, 0.2]) == [END] * 3
    assert decisions(FlushControl("background", 2, 10.0, clock), clock, [0, 100]) == [BACKGROUND] * 2


def test_adaptive_judges_after_three_invocations_then_follows_the_mean_gap() -> None:
    clock = FakeClock()
    control = FlushControl("adaptive", 5, 1.0, clock)
    assert decisions(control, clock, [0, 5, 10, 15]) == [END] * 4  # too few to judge, then sparse
    assert decisions(control, clock, [20]) == [END]  # full window, mean gap 5 s > 1 s
    # every 0.5 s: background once the window's mean gap is at most 1 s
    frequent = decisions(control, clock, [20.5, 21, 21.5, 22, 22.5])
    assert frequent[-1] == BACKGROUND and frequent[0] == END
    assert decisions(control, clock, [23.5]) == [BACKGROUND]  # mean (23.5-21)/4 = 0.625 s
    sparse = decisions(control, clock, [30, 40, 50, 60])  # sparse again
    assert sparse[-1] == END
    assert control.mode == "adaptive"


def test_adaptive_goes_background_from_the_third_frequent_invocation() -> None:
    clock = FakeClock()
    control = FlushControl("adaptive", 20, 10.0, clock)
    assert decisions(control, clock, [0, 0.7, 1.4, 2.1]) == [END, END, BACKGROUND, BACKGROUND]
    # sparse from the start: the third one judges them sparse and keeps draining
    clock2 = FakeClock()
    sparse = FlushControl("adaptive", 20, 10.0, clock2)
    assert decisions(sparse, clock2, [0, 30, 60]) == [END, END, END]


def test_adaptive_logs_each_switch_once() -> None:
    logger = logging.getLogger("sentry_ext.delivery.flush")  # the package logger may not propagate: listen here
    records: List[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        clock = FakeClock()
        control = FlushControl("adaptive", 5, 1.0, clock)
        decisions(control, clock, [0, 5, 10, 15, 20])  # sparse: stays with end, nothing said
        decisions(control, clock, [20 + t * 0.5 for t in range(1, 8)])  # frequent: one switch
        decisions(control, clock, [30, 40, 50, 60, 70])  # sparse again: one switch back
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    switches = [r.getMessage() for r in records if "adaptive: switching" in r.getMessage()]
    assert len(switches) == 2, switches  # one line per switch, not per invocation
    assert "from end to background" in switches[0] and "from background to end" in switches[1]


def test_the_gap_bound_is_inclusive() -> None:
    clock = FakeClock()
    control = FlushControl("adaptive", 2, 1.0, clock)
    assert decisions(control, clock, [0, 1.0, 2.5]) == [END, BACKGROUND, END]


def test_fall_back_turns_every_mode_to_background() -> None:
    clock = FakeClock()
    for mode in ("end", "adaptive"):
        control = FlushControl(mode, 2, 0.001, clock)
        control.fall_back()
        assert control.mode == "background" and decisions(control, clock, [0, 100]) == [BACKGROUND] * 2


def test_from_config_and_unknown_modes() -> None:
    cfg = load({"SENTRY_DSN": "https://abc@o1.ingest.sentry.io/42", "SENTRY_EXT_FLUSH": "adaptive",
                "SENTRY_EXT_ADAPTIVE_WINDOW": "3", "SENTRY_EXT_ADAPTIVE_GAP_MS": "1500"})
    control = FlushControl.from_config(cfg)
    assert control.mode == "adaptive" and control.gap_s == 1.5
    with pytest.raises(ValueError):
        FlushControl("sometimes", 2, 1.0)
