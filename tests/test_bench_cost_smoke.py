"""Smoke test of the 128 MB cost suite: ``tools/bench.py --cost --quick`` runs end to end under a
CPU-quota cgroup, or says ``SKIPPING`` with the reason when this machine gives no cgroup rights.

Only keeps the tool from rotting (3 invocations, the SDK alone and ours in ``adaptive``); its
numbers are not targets, but every envelope must arrive and every figure must be there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 120

sys.path.insert(0, str(ROOT))
from helpers import run_quick_bench  # noqa: E402
from tools.cgroup_cpu import CpuQuota, lambda_quota_us  # noqa: E402
from tools.tlsutil import openssl  # noqa: E402


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
    # the quota really held the sandbox: its processes were throttled
    assert all(run["throttled"].get("nr_throttled", 0) > 0 for runs in data["raw"]["cost"].values() for run in runs)
    assert "| setup | function p50 / p95 ms |" in bench["stdout"]
    assert data["command"].endswith("tools/bench.py --cost --quick --out %s" % out)
    assert not Path(data["cgroup"]).exists()  # removed afterwards
