"""Smoke test of the benchmark suite: ``tools/bench.py --quick`` runs end to end and writes every figure.

The benchmark itself stays out of the test run (its numbers need a quiet machine and minutes);
this only keeps the tool from rotting. The Node peer runs if ``node`` and a cached
``build/peer`` are there (never fetched here: ``--offline``), else it must say it skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.bench import FIGURE_KEYS, TARGETS

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 120  # --quick takes ~15-40 s; the slack is for a loaded CI machine


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--quick", "--peer", "node", "--offline",
                           "--out", str(out)], cwd=str(ROOT), capture_output=True, text=True, timeout=TIME_LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = data["figures"]
    assert set(FIGURE_KEYS) <= set(figures)
    assert all(figures[key] is not None for key in FIGURE_KEYS), {k: v for k, v in figures.items() if v is None}
    assert set(data["targets"]) == set(TARGETS)
    assert data["quick"] is True and data["machine"]["nproc"] >= 1
    # the figures are plausible, not targets: a smoke run on a busy machine proves nothing about speed
    assert 0 < figures["cold_start_floor_ms"] < 5000 and 0 < figures["cold_start_ms"] < 5000
    assert figures["delivery_by_end_pct"] == 100.0
    assert "| figure | ours |" in proc.stdout and "JSON: " in proc.stdout
    if data["peer_skipped"]:
        assert "SKIPPING the Node extension peer" in proc.stderr
    else:
        assert set(FIGURE_KEYS) <= set(data["peer"]) and data["peer"]["cold_start_ms"] is not None
