"""Lifecycle decisions of sentry_ext.main.Extension, driven in-process with a live pipeline."""

from __future__ import annotations

import logging
import time

import pytest

from helpers import KEY, PROJECT, make_pipeline, stop
from sentry_ext import main
from sentry_ext.config import load
from tools.fake_upstream import FakeUpstream


def extension(upstream: FakeUpstream, **env: str) -> main.Extension:
    cfg = load(dict({"SENTRY_DSN": upstream.dsn(KEY, PROJECT)}, **env))
    ext = main.Extension(cfg, "test-ext")
    ext.pipeline = make_pipeline(upstream.dsn(KEY, PROJECT))
    ext.ready.set()
    return ext


def invoke_event(request_id: str, in_s: float) -> dict:
    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": (time.time() + in_s) * 1000}


def test_broken_telemetry_falls_back_instead_of_waiting_for_the_deadline(upstream: FakeUpstream,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "TELEMETRY_GRACE_S", 0.2)
    ext = extension(upstream)
    try:
        t0 = time.monotonic()
        ext.on_invoke(invoke_event("r1", 30))
        assert time.monotonic() - t0 < 2
        assert ext.mode == "background"
    finally:
        stop(ext.pipeline)


def test_end_mode_waits_for_runtime_done_then_flushes(upstream: FakeUpstream) -> None:
    ext = extension(upstream)
    try:
        tracker = ext.pipeline.tracker
        tracker.record([{"type": "platform.start", "record": {"requestId": "r2"}}])
        import threading

        threading.Timer(0.3, tracker.record,
                        args=([{"type": "platform.runtimeDone", "record": {"requestId": "r2", "status": "success"}}],)).start()
        t0 = time.monotonic()
        ext.on_invoke(invoke_event("r2", 30))
        waited = time.monotonic() - t0
        assert 0.25 <= waited < 2
        assert ext.pipeline.stats.get("flushes") == 1 and ext.mode == "end"
    finally:
        stop(ext.pipeline)


def test_wait_never_passes_the_invoke_deadline(upstream: FakeUpstream) -> None:
    ext = extension(upstream, SENTRY_EXT_DEADLINE_MARGIN_MS="100")
    try:
        ext.pipeline.tracker.record([{"type": "platform.start", "record": {"requestId": "r3"}}])
        t0 = time.monotonic()
        ext.on_invoke(invoke_event("r3", 0.6))  # runtimeDone never comes: a function timing out
        assert time.monotonic() - t0 < 0.6
        assert ext.pipeline.stats.get("runtime_done_missed") == 1
    finally:
        stop(ext.pipeline)


def test_adaptive_switches_to_background_when_invocations_are_frequent(upstream: FakeUpstream) -> None:
    ext = extension(upstream, SENTRY_EXT_FLUSH="adaptive", SENTRY_EXT_ADAPTIVE_WINDOW="5",
                    SENTRY_EXT_ADAPTIVE_GAP_MS="1000")
    logger = logging.getLogger("sentry_ext.main")  # the package logger may not propagate: listen here
    records: list = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        modes = [ext.effective_mode(float(t)) for t in range(0, 20, 5)]  # sparse: every 5 s
        assert modes == ["end"] * 4
        modes = [ext.effective_mode(20.0 + t * 0.5) for t in range(6)]  # every 0.5 s
        assert modes[-1] == "background"
        modes = [ext.effective_mode(100.0 + t * 3) for t in range(5)]  # sparse again
        assert modes[-1] == "end"
        switches = [r.getMessage() for r in records if "adaptive: switching" in r.getMessage()]
        assert len(switches) == 2, switches  # one line per switch, not per invocation
        assert "from end to background" in switches[0] and "from background to end" in switches[1]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        stop(ext.pipeline)


def test_deadline_conversion_applies_the_margin() -> None:
    now_wall, now_mono = time.time(), time.monotonic()
    deadline = main._deadline({"deadlineMs": (now_wall + 5) * 1000}, 200)
    assert abs((deadline - now_mono) - 4.8) < 0.05
    fallback = main._deadline({}, 200)
    assert 1.5 < fallback - time.monotonic() < 2.0
