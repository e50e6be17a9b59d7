"""Smoke test of the 128 MB cost suite: ``tools/bench.py --cost --quick`` runs end to end under a
CPU-quota cgroup, or says ``SKIPPING`` with the reason when this machine gives no cgroup rights.

Only keeps the tool from rotting (3 invocations, the SDK alone and ours in ``adaptive``); its
numbers are not targets, but every envelope must arrive and every figure must be there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_quick_bench
from tools.bench_cost import IDLE_CLOSE_S, floor_relay, main as cost_main, run_sandbox, summarize
from tools.cgroup_cpu import CpuQuota, lambda_quota_us
from tools.tlsutil import openssl, self_signed

TIME_LIMIT_S = 120


def test_lambda_quota_is_memory_over_1769_of_a_cpu() -> None:
    assert lambda_quota_us(128, 20000) == 1447
    assert lambda_quota_us(1769, 20000) == 20000
    assert lambda_quota_us(64, 20000) == 1000  # the kernel's smallest quota


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_quick_cost_bench_runs_or_skips_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    bench = run_quick_bench("--cost", out, TIME_LIMIT_S)
    data = bench["data"]
    why_not = CpuQuota.unavailable()
    if why_not is not None:
        assert "SKIPPING the 128 MB suite: %s" % why_not in bench["stdout"]
        assert data["quota_skipped"] == why_not and "cost" not in data
        pytest.skip("128 MB suite skipped: %s" % why_not)
    assert data["quota"] == {"quota_us": 1447, "period_us": 20000}
    assert set(data["cost"]) == {"sdk", "adaptive"}
    for key, figures in data["cost"].items():
        assert figures["invocations"] == 3 and figures["failed"] == 0, (key, figures)
        assert figures["delivered"] == figures["expected"] == 9, (key, figures)
        for name in ("function_ms", "post_runtime_ms", "billed_ms"):
            assert figures[name]["p50"] is not None, (key, name)
        assert figures["init_ms"]["p50"] and figures["handshakes_per_invocation"] is not None
        # every handshake (SHUTDOWN's too) per accepted request, and the backlog the last invocation left
        assert figures["handshakes_per_request"] is not None and figures["left_for_shutdown"] is not None
    # the quota really held the sandbox: its processes were throttled
    assert all(run["throttled"].get("nr_throttled", 0) > 0 for runs in data["raw"]["cost"].values() for run in runs)
    assert "| setup | function p50 / p95 ms |" in bench["stdout"]
    assert data["command"].endswith("tools/bench.py --cost --quick --out %s" % out)
    assert not Path(data["cgroup"]).exists()  # removed afterwards


def _run(handshakes_per_row: int, total: int, accepted: int, left: int) -> dict:
    rows = [{"status": "success", "function_ms": 10.0, "post_runtime_ms": 0.0, "billed_ms": 10.0,
             "init_ms": None, "handshakes": handshakes_per_row, "resumed": 0} for _ in range(4)]
    return {"rows": rows, "failed": 0, "delivered": 12, "expected": 12, "handshakes_total": total,
            "accepted_requests": accepted, "left_for_shutdown": left}


def test_summary_counts_the_shutdown_drains_handshakes_and_backlog() -> None:
    # A backlog left for SHUTDOWN makes handshakes per invocation look low (8 over 8 invocations);
    # per accepted request, the SHUTDOWN drain's connections included (8 + 8 over 24), it does not.
    out = summarize([_run(1, 8, 12, 6), _run(1, 8, 12, 4)])
    assert out["handshakes_per_invocation"] == 1.0
    assert out["handshakes_per_request"] == 16 / 24
    assert out["left_for_shutdown"] == 5.0


def test_ours_env_takes_extension_settings_only() -> None:
    with pytest.raises(SystemExit) as exc:
        cost_main(["--ours-env", "PATH=/tmp"])
    assert exc.value.code == 2


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_floor_relay_relays_every_envelope_in_both_cases(tmp_path: Path) -> None:
    # tools/floor_relay.py, the CPU suite's floor (--floor-relay), through the emulator with the real
    # SDK: every envelope reaches the upstream, whether connections survive the freeze or not.
    cert, key = self_signed(tmp_path / "tls")
    relay = floor_relay(tmp_path)
    for idle_close_s in (None, IDLE_CLOSE_S):
        run = run_sandbox(relay, tmp_path, cert, key, 3, None, idle_close_s=idle_close_s)
        assert run["failed"] == 0 and run["delivered"] == run["expected"] == 9, run
        assert run["ext_cpu_ms"] is not None  # the process the suite counts is the relay's
        if idle_close_s:  # every thawed invocation found its connections closed: new ones, resumed
            assert all(row["handshakes"] >= 1 for row in run["rows"][1:]), run["rows"]
