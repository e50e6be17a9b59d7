"""Smoke test of the optimisation runner: ``tools/bench_variants.py --quick`` with HEAD as its own
variant runs end to end and gives every figure for both trees.

Only keeps the tool from rotting; its numbers (one sample each) are not for use. The thresholds'
verdicts are tested on made-up samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.bench_variants import FIGURES, Tree, summarize
from tools.tlsutil import openssl

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 180  # ~25 s on the development VM: two layer builds, a cold start, a burst, 20 invocations each


@pytest.mark.skipif(openssl() is None, reason="no openssl command for the upstream's certificate")
def test_quick_variants_run_gives_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "variants.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_variants.py"), "--quick", "--variant",
                           "same=HEAD", "--out", str(out)], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=TIME_LIMIT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [t["key"] for t in data["trees"]] == ["base", "same"]
    for key in ("base", "same"):
        missing = [f for f, _, _ in FIGURES if data["medians"][key][f] is None]
        assert not missing, (key, missing, proc.stderr[-3000:])
    assert set(data["deltas"]) == {"same"} and set(data["verdicts"]) == {"same"}
    assert data["medians"]["base"]["cold_start_ms"] > 0 and data["medians"]["base"]["rss_after_init_mib"] > 0
    assert "| tree | cold start ms |" in proc.stdout and "JSON: " in proc.stdout
    assert data["command"].endswith("tools/bench_variants.py --quick --variant same=HEAD --out %s" % out)


def _tree(key: str, **values: float) -> Tree:
    tree = Tree(key, key, Path("/nonexistent"), "abc subject", "test")
    for figure, _, _ in FIGURES:
        tree.samples[figure] = [values.get(figure, 10.0), None]  # a failed sample is ignored
    return tree


def test_a_mechanism_is_kept_only_if_a_threshold_is_met() -> None:
    out = summarize([_tree("base"), _tree("rss", rss_after_init_mib=10.6), _tree("noise", cold_start_ms=10.9,
                                                                                  cpu_per_invocation_ms=9.0)])
    assert out["verdicts"]["rss"] == {"keep": True, "saves_enough_on": ["rss_after_init_mib"]}
    assert out["verdicts"]["noise"] == {"keep": False, "saves_enough_on": []}
    assert out["deltas"]["noise"]["cpu_per_invocation_ms"] == -1.0
    assert out["failed_samples"]["base"]["cold_start_ms"] == 1
