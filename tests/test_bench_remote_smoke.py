"""Smoke test of the remote-upstream suite: ``tools/bench.py --remote --quick`` runs end to end.

Only keeps the tool from rotting (bursts of 3 and 30 at 80 ms over HTTPS, ours only); its numbers
are not targets, but nothing may be lost or duplicated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_quick_bench
from tools.tlsutil import openssl

TIME_LIMIT_S = 120


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_quick_remote_bench_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "remote.json"
    bench = run_quick_bench("--remote", out, TIME_LIMIT_S)
    data = bench["data"]
    runs = data["remote"]
    assert [(r["delay_ms"], r["burst"]) for r in runs] == [(80, 3), (80, 30)]
    for run in runs:
        assert run["status"] == "success" and run["by_end"] == run["burst"] and run["duplicates"] == 0, run
        assert 1 <= run["tls_handshakes"] <= run["burst"] and run["rss_peak_mib"] and run["peak_threads"]
    assert "| upstream | burst | extension |" in bench["stdout"]
    assert data["command"].endswith("tools/bench.py --remote --quick --out %s" % out)  # how it was started
