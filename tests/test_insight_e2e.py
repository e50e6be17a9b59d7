"""End to end: what the SDK cannot send. A timed-out, crashed or OOM-killed invocation arrives
upstream as one transaction made by the extension, on the function's trace (the failure event's);
every invocation's platform.report arrives as trace metrics; a caught raise gets neither an extra
transaction nor a double. Real sentry-sdk (AwsLambdaIntegration, traces_sample_rate=1.0) under
real awslambdaric, the emulator, a fake upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
from sentry_relay.processing import StoreNormalizer

from e2e import EXTENSION_SDK, ext_log, extension_events, make_emulator
from tools.emulator import Emulator, InvokeResult
from tools.fake_upstream import FakeUpstream


def transactions(upstream: FakeUpstream, sdk: str) -> List[Dict[str, Any]]:
    """Transactions upstream received, made by the extension (``sdk`` = EXTENSION_SDK) or else by the SDK."""
    found = [json.loads(p) for _, _, p in upstream.items("transaction")]
    return [t for t in found if (t.get("sdk", {}).get("name") == EXTENSION_SDK) == (sdk == EXTENSION_SDK)]


def figures(upstream: FakeUpstream) -> Dict[str, Dict[str, float]]:
    """Trace metric values upstream received, by request id and name (each once)."""
    out: Dict[str, Dict[str, float]] = {}
    for _, header, payload in upstream.items("trace_metric"):
        items = json.loads(payload)["items"]
        assert header["item_count"] == len(items)
        for item in items:
            rid = item["attributes"]["aws_lambda.request_id"]["value"]
            assert item["name"] not in out.setdefault(rid, {}), "a figure twice"
            out[rid][item["name"]] = item["value"]
    return out


def one_unfinished(upstream: FakeUpstream, result: InvokeResult, status: str, log: str) -> Dict[str, Any]:
    """The one extension transaction, checked against the failure event and Relay's normalizer."""
    found = transactions(upstream, EXTENSION_SDK)
    assert len(found) == 1, log
    tx = found[0]
    (event,) = extension_events(upstream)
    trace = tx["contexts"]["trace"]
    assert trace["trace_id"] == event["contexts"]["trace"]["trace_id"], "not on the failure event's trace"
    assert (trace["op"], trace["status"], tx["transaction"]) == ("function.aws", status, "e2e-function")
    assert tx["tags"]["aws_lambda.request_id"] == result.request_id == tx["extra"]["lambda"]["aws_request_id"]
    assert tx["environment"] == "sample"
    assert not StoreNormalizer().normalize_event(tx).get("errors")
    # the SDK itself sent no transaction for this request
    assert not [t for t in transactions(upstream, "sdk") if result.request_id in json.dumps(t)]
    return tx


def check_report_figures(upstream: FakeUpstream, results: List[InvokeResult], log: str) -> None:
    got = figures(upstream)
    for result in results:
        mine = got.get(result.request_id)
        assert mine is not None, "no trace metrics for %s\n%s" % (result.request_id, log)
        assert {"aws.lambda.duration", "aws.lambda.billed_duration", "aws.lambda.max_memory_used",
                "aws.lambda.estimated_cost"} <= set(mine), mine
        assert mine["aws.lambda.duration"] == pytest.approx(result.duration_ms, abs=1.0)
        assert ("aws.lambda.init_duration" in mine) == bool(result.cold_start), mine


def run_one(emu: Emulator, payload: Dict[str, Any]) -> InvokeResult:
    emu.start()
    result = emu.invoke(payload)
    result.cold_start = True  # the first invocation after start(): its report carries initDurationMs
    assert result.reset and result.shutdown is not None
    return result


@pytest.mark.parametrize("flush", ["end", "background"])
def test_a_timeout_is_one_extension_transaction_on_the_functions_trace(tmp_path: Path, upstream: FakeUpstream,
                                                                       flush: str) -> None:
    with make_emulator(tmp_path, upstream, timeout_s=1.0, SENTRY_EXT_FLUSH=flush) as emu:
        result = run_one(emu, {"sleep_s": 5})
        log = ext_log(emu)
    assert result.status == "timeout"
    tx = one_unfinished(upstream, result, "deadline_exceeded", log)
    assert 0.9 <= tx["timestamp"] - tx["start_timestamp"] <= 1.5
    check_report_figures(upstream, [result], log)


def test_a_runtime_exit_is_one_extension_transaction(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream) as emu:
        result = run_one(emu, {"exit": 3})
        log = ext_log(emu)
    assert result.error_type == "Runtime.ExitError"
    one_unfinished(upstream, result, "internal_error", log)
    check_report_figures(upstream, [result], log)
    # end mode: it went out in the drain before /event/next, with the failure event
    assert log.index("invocation unfinished by the SDK") < log.index("SHUTDOWN (failure)"), log


def test_an_out_of_memory_kill_is_one_extension_transaction(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, memory_mb=128) as emu:
        result = run_one(emu, {"allocate_mb": 1024})
        log = ext_log(emu)
    assert result.error_type == "Runtime.OutOfMemory"
    one_unfinished(upstream, result, "internal_error", log)
    check_report_figures(upstream, [result], log)
    assert figures(upstream)[result.request_id]["aws.lambda.max_memory_used"] == 128


def test_good_invocations_and_a_caught_raise_get_no_extra_transaction_and_every_report_arrives(
        tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream) as emu:
        emu.start()
        results = [emu.invoke(payload) for payload in ({}, {"raise": True}, {"capture": False}, {})]
        emu.shutdown()
        log = ext_log(emu)
    results[0].cold_start = True  # the first after start(): its report carries initDurationMs
    assert [r.status for r in results] == ["success", "error", "success", "success"]
    assert transactions(upstream, EXTENSION_SDK) == [] and extension_events(upstream) == []
    sdk = transactions(upstream, "sdk")
    assert len(sdk) == 4, log  # one each, the raise's included (the SDK caught it), none twice
    assert sorted(t["extra"]["lambda"]["aws_request_id"] for t in sdk) == sorted(r.request_id for r in results)
    check_report_figures(upstream, results, log)
    # batched: one envelope per drain, never one per figure
    assert len(upstream.items("trace_metric")) <= len(results)
    assert all(h["item_count"] >= 4 for _, h, _ in upstream.items("trace_metric"))


def test_a_restored_snapshot_reports_its_restore_duration(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, init_type="snap-start") as emu:
        emu.start()
        emu.restore()
        result = emu.invoke({})
        emu.shutdown()
        log = ext_log(emu)
    mine = figures(upstream)[result.request_id]
    assert mine["aws.lambda.restore_duration"] > 0 and "aws.lambda.init_duration" not in mine, log


def test_turned_off_nothing_is_sent(tmp_path: Path, upstream: FakeUpstream) -> None:
    with make_emulator(tmp_path, upstream, timeout_s=1.0, SENTRY_EXT_METRICS="off",
                       SENTRY_EXT_UNFINISHED_TRANSACTIONS="off") as emu:
        run_one(emu, {"sleep_s": 5})
        log = ext_log(emu)
    assert len(extension_events(upstream)) == 1, log  # the failure event stays
    assert transactions(upstream, EXTENSION_SDK) == [] and upstream.items("trace_metric") == []
