"""Smoke test of the per-connection TLS cost tool: ``tools/bench_tls.py`` runs end to end against a
fake upstream in a child process and reports every case. Its numbers (a few requests) are not for use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.tlsutil import openssl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_tls_cost_tool_reports_every_case() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_tls.py"), "--requests", "3", "--rounds", "1"],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("ssl, new connection", "ssl, kept connection", "ours, new connection", "ours, kept connection",
                "ssl: per new connection", "ours: per new connection"):
        assert "| %s" % row in proc.stdout or "| **%s" % row in proc.stdout, (row, proc.stdout)
    figures = [float(line.split("|")[2]) for line in proc.stdout.splitlines()
               if line.startswith("| ") and "connection" in line and "new −" not in line]
    assert figures and all(value > 0 for value in figures), proc.stdout
