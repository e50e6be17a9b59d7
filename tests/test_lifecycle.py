"""Lifecycle decisions of sentry_ext.main.Extension, driven in-process with a live pipeline."""

from __future__ import annotations

import time
from typing import Callable, Optional

import pytest

from helpers import KEY, PROJECT, StartPipeline, health, port_of
from sentry_ext import main
from sentry_ext.config import load
from sentry_ext.awslambda.extensions_api import LambdaApiError, event_deadline
from tools.fake_upstream import FakeUpstream


@pytest.fixture
def extension(upstream: FakeUpstream, pipelines: StartPipeline) -> Callable[..., main.Extension]:
    """``extension(**env)``: an Extension whose pipeline is ready (stopped after the test)."""
    def make(**env: str) -> main.Extension:
        ext = main.Extension(load(dict({"SENTRY_DSN": upstream.dsn(KEY, PROJECT)}, **env)), "test-ext")
        ext.pipeline = pipelines(flush_control=ext.flush_control)
        ext.ready.set()
        return ext
    return make


def invoke_event(request_id: str, in_s: float) -> dict:
    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": (time.time() + in_s) * 1000}


def test_broken_telemetry_falls_back_instead_of_waiting_for_the_deadline(extension: Callable[..., main.Extension],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "TELEMETRY_GRACE_S", 0.2)
    ext = extension()
    t0 = time.monotonic()
    ext.on_invoke(invoke_event("r1", 30))
    assert time.monotonic() - t0 < 2
    assert ext.flush_control.mode == "background"
    assert health(port_of(ext.pipeline))["flush_mode"] == "background"  # one mode, not a copy per thread


def test_end_mode_waits_for_runtime_done_then_flushes(extension: Callable[..., main.Extension]) -> None:
    ext = extension()
    ext.pipeline.on_telemetry([{"type": "platform.start", "record": {"requestId": "r2"}}])
    import threading

    threading.Timer(0.3, ext.pipeline.on_telemetry,
                    args=([{"type": "platform.runtimeDone", "record": {"requestId": "r2", "status": "success"}}],)).start()
    t0 = time.monotonic()
    ext.on_invoke(invoke_event("r2", 30))
    waited = time.monotonic() - t0
    assert 0.25 <= waited < 2
    assert ext.pipeline.stats.get("flushes") == 1 and ext.flush_control.mode == "end"


def test_wait_never_passes_the_invoke_deadline(extension: Callable[..., main.Extension]) -> None:
    ext = extension(SENTRY_EXT_DEADLINE_MARGIN_MS="100")
    ext.pipeline.on_telemetry([{"type": "platform.start", "record": {"requestId": "r3"}}])
    t0 = time.monotonic()
    ext.on_invoke(invoke_event("r3", 0.6))  # runtimeDone never comes: a function timing out
    assert time.monotonic() - t0 < 0.6
    assert ext.pipeline.stats.get("runtime_done_missed") == 1


def test_deadline_conversion_applies_the_margin() -> None:
    now_wall, now_mono = time.time(), time.monotonic()
    deadline = event_deadline({"deadlineMs": (now_wall + 5) * 1000}, 200)
    assert abs((deadline - now_mono) - 4.8) < 0.05
    fallback = event_deadline({}, 200)
    assert 1.5 < fallback - time.monotonic() < 2.0


class ScriptedApi:
    """Stands in for LambdaApi in the loop: answers /event/next from a script of events and errors."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.polls = 0
        self.errors: list = []
        self.extension_id = "ext"

    def next_event(self, on_sent=None) -> dict:
        self.polls += 1
        if on_sent is not None:
            on_sent()
        step = self.script.pop(0) if self.script else LambdaApiError("scripted end", 403)
        if isinstance(step, Exception):
            raise step
        return step

    def report_error(self, phase: str, error_type: str, message: str) -> None:
        self.errors.append((phase, error_type))


def test_transient_poll_errors_are_retried_until_the_api_answers() -> None:
    transient = [LambdaApiError("connection refused"), LambdaApiError("answered 503", 503),
                 LambdaApiError("answered 404", 404)]  # a lone fatal answer is retried too
    api = ScriptedApi(transient + [{"eventType": "INVOKE", "requestId": "r"},
                                   {"eventType": "SHUTDOWN", "deadlineMs": (time.time() + 2) * 1000}])
    ext = main.Extension(load({}), "test-ext", api=api)  # type: ignore[arg-type]
    assert ext._loop() == 0
    assert api.polls == 5 and api.errors == []


def test_repeated_fatal_poll_answers_stop_the_extension_and_tell_lambda() -> None:
    fatal = LambdaApiError("answered 403", 403)
    api = ScriptedApi([fatal, LambdaApiError("refused")] + [fatal] * main.FATAL_POLLS)
    ext = main.Extension(load({}), "test-ext", api=api)  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert ext._loop() == 1
    assert time.monotonic() - t0 < 5  # backoff 50 ms doubling, capped at 1 s
    assert api.polls == 2 + main.FATAL_POLLS  # a transient error in between resets the count
    assert api.errors == [("exit", "Extension.LambdaApiError")]


@pytest.mark.parametrize("reason, reset", [("timeout", True), ("failure", True), ("spindown", False),
                                           ("Timeout", True), ("SandboxTerminated", False), (None, False)])
def test_shutdown_reasons_are_compared_without_case(reason: Optional[str], reset: bool) -> None:
    """Lambda sends lowercase reasons; AWS's emulator (RIE) capitalises them."""
    from sentry_ext.awslambda.extensions_api import is_reset

    assert is_reset(reason) is reset


def test_a_reset_named_as_rie_names_it_waits_for_the_timed_out_requests_records(
        pipelines: StartPipeline, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """SHUTDOWN ``Timeout`` (RIE's spelling) is a reset: the drain waits for the failed request's
    last records, which arrive after SHUTDOWN, and delivers its LambdaTimeout event."""
    import threading

    from sentry_ext import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "OUTCOME_WAIT_S", 10.0)  # the wait ends when the records are in
    pipe = pipelines()
    pipe.invoked({"requestId": "r-timeout"})
    pipe.on_telemetry([{"type": "platform.start", "record": {"requestId": "r-timeout"}}])
    records = [{"type": kind, "record": {"requestId": "r-timeout", "status": "timeout", "errorType": "Sandbox.Timedout",
                                         "metrics": {"durationMs": 3000.0}}}
               for kind in ("platform.runtimeDone", "platform.report")]
    late = threading.Timer(0.5, pipe.on_telemetry, args=(records,))
    late.start()
    try:
        outcome = pipe.shutdown(time.monotonic() + 30, "Timeout")
    finally:
        late.join(5)
    assert pipe.stats.get("failure_events") == 1 and outcome["drained"] == 1, pipe.summary()
    assert b"LambdaTimeout" in b"".join(r.body for r in upstream.requests)
