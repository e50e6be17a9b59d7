"""Smoke test of ``tools/bench_calls.py``: the counted extension runs through the emulator with the
real SDK, and the difference of two sandboxes gives calls per invocation for every thread."""

from __future__ import annotations

import re

import pytest

from tools.bench_calls import build_report, main, per_invocation, thread_group
from tools.tlsutil import openssl


def test_threads_are_grouped_by_role() -> None:
    assert thread_group("Thread-7 (process_request_thread)") == "handler"
    assert thread_group("sentry-ext-sender-3") == "senders"
    assert thread_group("sentry-ext-telemetry") == "telemetry"
    assert thread_group("MainThread") == "main"
    assert thread_group("sentry-ext-ingest") == "sentry-ext-ingest"


def test_per_invocation_is_the_difference_over_the_extra_invocations() -> None:
    short = {("main", "a"): 10, ("main", "C:len"): 4, ("senders", "b"): 3}
    long = {("main", "a"): 30, ("main", "C:len"): 44, ("senders", "b"): 3, ("handler", "c"): 5}
    calls = per_invocation(short, long, 20)
    assert calls == {("main", "a"): 1.0, ("main", "C:len"): 2.0, ("handler", "c"): 0.25}
    report = build_report(calls, 2)
    assert "| main | 1 | 2 |" in report and "| all | 1 | 2 |" in report  # handler's 0.25: under half a call
    assert "| 2.0 | main | C:len |" in report


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_counts_calls_per_thawed_invocation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--short", "2", "--long", "4", "--top", "5"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (handler|senders|telemetry|main|all) \| (\d+) \|", out, re.M))
    # 3 envelopes per invocation: each is read by the handler and sent by a sender
    assert {"handler", "senders", "main", "all"} <= set(rows), out
    assert all(int(n) > 0 for n in rows.values()), out
