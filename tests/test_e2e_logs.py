"""End to end: the function's own log lines (print, logging) reach Sentry Logs through the
Telemetry API with SENTRY_EXT_LOGS=on, and only then. Real sentry-sdk (AwsLambdaIntegration,
traces_sample_rate=1.0) under real awslambdaric, which writes its logging records as frames on
the emulator's telemetry log pipe and its prints to stdout, as in Lambda."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from e2e import EXTENSION_SDK, ext_log, extension_events, make_emulator
from helpers import attr
from tools.fake_upstream import FakeUpstream


def sdk_trace_ids(upstream: FakeUpstream, request_id: str) -> List[str]:
    """Trace ids of the SDK's events and transactions about ``request_id``."""
    ids = set()
    for kind in ("event", "transaction"):
        for _, _, payload in upstream.items(kind):
            event = json.loads(payload)
            if event.get("sdk", {}).get("name") != EXTENSION_SDK and request_id in json.dumps(event):
                ids.add(event["contexts"]["trace"]["trace_id"])
    return sorted(ids)


@pytest.mark.parametrize("flush", ["end", "background"])
def test_print_and_logging_lines_arrive_as_logs_of_their_request(tmp_path: Path, upstream: FakeUpstream,
                                                                  flush: str) -> None:
    with make_emulator(tmp_path, upstream, SENTRY_EXT_LOGS="on", SENTRY_EXT_FLUSH=flush,
                       SENTRY_RELEASE="shop@2") as emu:
        emu.start()
        results = [emu.invoke({"say": word, "capture": False}) for word in ("alpha", "beta")]
        if flush == "background":
            emu.shutdown()  # a spindown: SHUTDOWN sends what the last request left
        if flush == "end":  # queued before the drain that precedes the freeze: delivered when invoke returned
            assert len(upstream.logs()) == 6, ext_log(emu)
        log = ext_log(emu)
    # background: the last request's lines may wait for the next thaw; SHUTDOWN (closing) sends them
    logs = upstream.logs()  # raises if an item breaks the Sentry Logs protocol
    for word, result in zip(("alpha", "beta"), results):
        assert result.status == "success", log
        mine = [entry for entry in logs if attr(entry, "faas.invocation_id") == result.request_id]
        # prints (stdout) and logging records (the framed pipe) come through two pipes: their
        # relative order is not guaranteed; within each pipe the order is kept
        mine.sort(key=lambda entry: entry["severity_number"])
        assert [(entry["level"], entry["body"].splitlines()[0]) for entry in mine] == [
            ("info", "print " + word), ("warn", "warning " + word), ("error", "error " + word)], log
        error = mine[2]["body"]
        assert "Traceback (most recent call last)" in error and error.rstrip().endswith("KeyError: '%s'" % word)
        assert [mine[0]["trace_id"]] == sdk_trace_ids(upstream, result.request_id)  # the SDK's trace
        assert {entry["trace_id"] for entry in mine} == {mine[0]["trace_id"]}
        for entry in mine:
            assert attr(entry, "faas.name") == "e2e-function" and attr(entry, "cloud.region") == "us-east-1"
            assert attr(entry, "sentry.release") == "shop@2" and attr(entry, "sentry.environment") == "sample"
            assert attr(entry, "sentry.origin") == "auto.log.aws_lambda_extension"
    assert not any("[sentry-lambda-extension]" in entry["body"] or entry["body"].startswith(("START", "END",
                                                                                             "REPORT"))
                   for entry in logs)


def test_nothing_is_forwarded_with_logs_off(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream) as emu:
        emu.start()
        result = emu.invoke({"say": "quiet", "capture": False})
        log = ext_log(emu)
    assert result.status == "success" and upstream.items("transaction"), log  # the SDK's own traffic flows
    assert upstream.items("log") == [], log


def test_a_timeout_event_carries_the_last_lines_as_breadcrumbs(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, timeout_s=1.0, SENTRY_EXT_LOGS="on") as emu:
        emu.start()
        result = emu.invoke({"say": "gamma", "capture": False, "sleep_s": 5})
        log = ext_log(emu)
    assert result.status == "timeout", log
    (event,) = extension_events(upstream)
    crumbs = [(c["level"], c["message"].splitlines()[0]) for c in event["breadcrumbs"]["values"]]
    assert sorted(crumbs) == [("error", "error gamma"), ("info", "print gamma"), ("warning", "warning gamma")], log
    # the lines went out as logs too, at SHUTDOWN or with the timeout's runtimeDone
    assert [attr(e, "faas.invocation_id") for e in upstream.logs()] == [result.request_id] * 3, log


def test_lambda_json_log_format(tmp_path: Path, upstream: FakeUpstream) -> None:
    """AWS_LAMBDA_LOG_FORMAT=JSON: awslambdaric frames each logging record as a JSON object (with
    requestId), which the Telemetry API passes as an object; prints stay text."""
    with make_emulator(tmp_path, upstream, runtime_env={"AWS_LAMBDA_LOG_FORMAT": "JSON"},
                       SENTRY_EXT_LOGS="on") as emu:
        emu.start()
        result = emu.invoke({"say": "delta", "capture": False})
        log = ext_log(emu)
    assert result.status == "success", log
    mine = sorted((e for e in upstream.logs() if attr(e, "faas.invocation_id") == result.request_id),
                  key=lambda entry: entry["severity_number"])
    assert [(e["level"], e["body"]) for e in mine] == [
        ("info", "print delta"), ("warn", "warning delta"), ("error", "error delta")], log
    assert attr(mine[1], "logger.name") == "app"
    assert attr(mine[2], "exception.type") == "KeyError" and "raise KeyError" in attr(mine[2], "exception.stacktrace")
