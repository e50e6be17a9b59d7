"""Keeps tools/soak.py from rotting: its ~15 s ``--quick`` run must pass and report its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_soak_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "tools.soak", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: OK" in proc.stdout and "RSS KiB:" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    assert report["invocations"] >= 10 and report["failed_or_late_count"] == 0
    assert report["faults"] >= 2 and report["sandbox_resets"] == 0
    assert report["shutdown_exit_code"] == 0 and not report["shutdown_killed"]
    assert len(report["samples"]) >= 5 and report["threads"]["max"] < 20
    assert report["tracebacks_in_log"] == 0
    assert report["extension_summary"]["received"] > 0
