"""End to end: what the SDK cannot report (timeouts, out-of-memory kills, runtime exits, failed
Inits) arrives upstream as one event made by the extension; handler errors and good invocations
get none. Real sentry-sdk (AwsLambdaIntegration, traces_sample_rate=1.0) under real awslambdaric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from e2e import EXTENSION_NAME, EXTENSION_SDK, ext_log, extension_events, make_emulator
from tools.emulator import Emulator, InitFailed, InvokeResult, ShutdownResult
from tools.fake_upstream import FakeUpstream

BROKEN_FUNCTION = Path(__file__).resolve().parent / "fixtures" / "broken_function"


def one_event(upstream: FakeUpstream, log: str) -> Dict[str, Any]:
    events = extension_events(upstream)
    assert len(events) == 1, log
    return events[0]


def sdk_trace_ids(upstream: FakeUpstream, request_id: str) -> List[str]:
    """Trace ids of the SDK's events about ``request_id`` (the sample function names it in its message)."""
    ids = []
    for _, _, payload in upstream.items("event"):
        event = json.loads(payload)
        if event.get("sdk", {}).get("name") != EXTENSION_SDK and request_id in json.dumps(event):
            ids.append(event["contexts"]["trace"]["trace_id"])
    return ids


def run_one(emu: Emulator, payload: Dict[str, Any]) -> InvokeResult:
    emu.start()
    result = emu.invoke(payload)
    assert result.reset and result.shutdown is not None
    return result


def check_clean_exit(shutdown: ShutdownResult, log: str) -> None:
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed, log
    exit_ms = shutdown.exit_ms[EXTENSION_NAME]
    assert exit_ms is not None and exit_ms < 1000, log  # well inside the 2 s window


def check_event(event: Dict[str, Any], kind: str, type_: str, request_id: str, error_type: str) -> None:
    (exc,) = event["exception"]["values"]
    assert exc["type"] == type_ and exc["mechanism"] == {"type": "aws_lambda_extension", "handled": False}
    assert event["level"] == "fatal" and event["fingerprint"] == ["aws-lambda-extension", "e2e-function", kind]
    tags = event["tags"]
    assert tags["aws_lambda.request_id"] == request_id and tags["aws_lambda.failure"] == kind
    assert tags["aws_lambda.function_name"] == "e2e-function" and tags["aws_lambda.region"] == "us-east-1"
    assert tags["aws_lambda.error_type"] == error_type and tags["aws_lambda.cold_start"] == "true"
    assert event["contexts"]["aws_lambda"]["request_id"] == request_id
    assert event["environment"] == "sample"  # from the SDK's envelope header


@pytest.mark.parametrize("flush", ["end", "background"])
def test_timeout_is_one_event_on_the_sdk_trace(tmp_path: Path, upstream: FakeUpstream, flush: str) -> None:
    with make_emulator(tmp_path, upstream, timeout_s=1.0, SENTRY_EXT_FLUSH=flush) as emu:
        result = run_one(emu, {"sleep_s": 5})
        log = ext_log(emu)
    assert result.status == "timeout" and result.shutdown.reason == "timeout"
    check_clean_exit(result.shutdown, log)
    event = one_event(upstream, log)
    check_event(event, "timeout", "LambdaTimeout", result.request_id, "Sandbox.Timedout")
    assert event["exception"]["values"][0]["value"].startswith("Task timed out after 1.")
    assert [event["contexts"]["trace"]["trace_id"]] == sdk_trace_ids(upstream, result.request_id)
    assert event["contexts"]["aws_lambda_report"]["memory_size_mb"] == 128


def test_out_of_memory_kill_is_one_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, memory_mb=128) as emu:
        result = run_one(emu, {"allocate_mb": 1024})
        log = ext_log(emu)
    assert result.status == "error" and result.error_type == "Runtime.OutOfMemory"
    check_clean_exit(result.shutdown, log)
    event = one_event(upstream, log)
    check_event(event, "oom", "LambdaOutOfMemory", result.request_id, "Runtime.OutOfMemory")
    assert event["exception"]["values"][0]["value"] == "Out of memory: 128 of 128 MB used"
    assert [event["contexts"]["trace"]["trace_id"]] == sdk_trace_ids(upstream, result.request_id)


@pytest.mark.parametrize("report", ["on", "off"])
def test_runtime_exit_is_one_event_unless_turned_off(tmp_path: Path, upstream: FakeUpstream, report: str) -> None:
    with make_emulator(tmp_path, upstream, SENTRY_EXT_REPORT_FAILURES=report) as emu:
        result = run_one(emu, {"exit": 3})
        log = ext_log(emu)
    assert result.status == "error" and result.error_type == "Runtime.ExitError"
    check_clean_exit(result.shutdown, log)
    events = extension_events(upstream)
    if report == "off":
        assert events == [] and len(sdk_trace_ids(upstream, result.request_id)) == 1
        return
    event = one_event(upstream, log)
    check_event(event, "exit", "LambdaRuntimeExit", result.request_id, "Runtime.ExitError")
    assert [event["contexts"]["trace"]["trace_id"]] == sdk_trace_ids(upstream, result.request_id)
    # end mode: the event went out in the drain before /event/next, not only at SHUTDOWN
    assert log.index("invocation failed") < log.index("SHUTDOWN (failure)"), log


def test_failed_init_is_one_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, task_root=BROKEN_FUNCTION) as emu:
        with pytest.raises(InitFailed) as failed:
            emu.start()
        log = ext_log(emu)
        check_clean_exit(failed.value.shutdown, log)
        assert failed.value.shutdown.reason == "failure"
        event = one_event(upstream, log)
        # an invoke re-runs Init in a fresh sandbox: it fails again, the invoke is an error, and
        # that sandbox's extension reports its own failed Init
        again = emu.invoke({})
        assert again.init_failed and again.status == "error" and again.reset
        assert len(extension_events(upstream)) == 2
    (exc,) = event["exception"]["values"]
    assert exc["type"] == "LambdaInitError" and "RuntimeError" in exc["value"]
    assert event["tags"]["aws_lambda.failure"] == "init" and "aws_lambda.request_id" not in event["tags"]
    assert event["fingerprint"] == ["aws-lambda-extension", "e2e-function", "init"]


def test_handler_errors_and_good_invocations_get_no_extension_event(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream) as emu:
        emu.start()
        results = [emu.invoke(payload) for payload in ({}, {"raise": True}, {"capture": False})]
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert [r.status for r in results] == ["success", "error", "success"] and not any(r.reset for r in results)
    check_clean_exit(shutdown, log)
    assert extension_events(upstream) == []
    raised = [json.loads(p) for _, _, p in upstream.items("event")
              if json.loads(p)["exception"]["values"][-1]["type"] == "RuntimeError"]
    assert len(raised) == 1 and raised[0]["exception"]["values"][-1]["mechanism"]["type"] == "aws_lambda"
