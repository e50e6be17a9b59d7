"""Smoke test of ``tools/bench_logs.py``: the in-process figure and the end-to-end comparison of
this tree with a baseline revision run and print every row (tiny sizes: a busy machine proves
nothing about speed, so no figure is checked against a target here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 120  # ~3 s each on an idle machine


def test_in_process_bench_reports_its_figures() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_logs.py"), "--lines", "50", "--rounds", "2"],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=TIME_LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '"parsed": 50' in proc.stdout and "CPU per log line:" in proc.stdout


def test_e2e_comparison_with_a_baseline_prints_both_trees() -> None:
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(ROOT), capture_output=True, timeout=30).returncode != 0:
        pytest.skip("not a git checkout: no revision to compare with")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_logs.py"), "--e2e", "--runs", "2",
                           "--baseline", "HEAD", "--invocations", "1", "--lines", "20"],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=TIME_LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| run ")]
    assert [(run, tree) for run, tree, *_ in rows] == [("1", "this tree"), ("1", "baseline HEAD"),
                                                       ("2", "baseline HEAD"), ("2", "this tree")]  # alternating
    assert all(row[5] == "20" for row in rows), rows  # every log arrived in every run
