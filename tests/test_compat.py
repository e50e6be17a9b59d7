"""Every Python Lambda offers (3.9 and newer) and both urllib3 lines.

- vermin fails the suite on syntax or stdlib use newer than 3.9 in ``sentry_ext``, ``tools``, ``bin``;
- a real Python 3.9, when this machine has one, compiles every file (what vermin cannot see);
- ``sentry_ext.delivery.transport`` and ``tls`` are exercised with urllib3 1.26 (what a pip-installed
  extension may meet next to botocore on Python < 3.10); the layer vendors urllib3 2.6, so there it does not arise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from tools.build_layer import find_python

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("sentry_ext", "tools", "bin")
URLLIB3_126 = "1.26.20"


def python_files() -> List[Path]:
    files: List[Path] = []
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            head = path.read_bytes()[:80].split(b"\n", 1)[0]
            if path.suffix == ".py" or (head.startswith(b"#!") and b"python" in head):
                files.append(path)
    return files


def test_vermin_finds_nothing_newer_than_python39() -> None:
    vermin = Path(sys.executable).parent / "vermin"
    if not vermin.exists():
        pytest.fail("vermin is missing: install the test extras (pip install -e .[test])")
    cmd = [str(vermin), "--no-config-file", "--target=3.9-", "--violations", "--no-tips", "--eval-annotations"] + [str(ROOT / top) for top in CHECKED]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, "vermin: code needs a Python newer than 3.9:\n%s%s" % (proc.stdout, proc.stderr)


def test_pyflakes_rules_find_nothing() -> None:
    """Unused imports and names, undefined names, syntax errors: ruff's F and E9 rules."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.fail("ruff is missing: install the test extras (pip install -e .[test])")
    cmd = [str(ruff), "check", "--no-cache", "--isolated", "--select", "F,E9", "--target-version", "py39",
           "--output-format", "concise"] + [str(ROOT / top) for top in ("sentry_ext", "tools", "tests")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python39_compiles_every_file() -> None:
    py39 = find_python("3.9")
    if py39 is None:
        pytest.skip("no Python 3.9 on this machine (vermin still checks the syntax)")
    files = python_files()
    assert any(f.name == "main.py" for f in files)
    code = ("import sys\nfor path in sys.argv[1:]:\n"
            "    with open(path, 'rb') as fh: compile(fh.read(), path, 'exec', dont_inherit=True)\n")
    proc = subprocess.run([py39.executable, "-I", "-c", code] + [str(f) for f in files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def urllib3_126() -> Path:
    """urllib3 1.26 installed into build/ (cached across runs)."""
    target = ROOT / "build" / ("urllib3-" + URLLIB3_126)
    if not (target / "urllib3" / "__init__.py").exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--disable-pip-version-check", "--only-binary=:all:", "--target", str(target),
                               "urllib3==" + URLLIB3_126], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_transport_and_forwarder_work_with_urllib3_126(urllib3_126: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(urllib3_126))
    check = subprocess.run([sys.executable, "-c", "import urllib3; print(urllib3.__version__)"], env=env,
                           capture_output=True, text=True, cwd=str(ROOT))
    assert check.stdout.strip() == URLLIB3_126, check.stderr
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "tests/test_forwarder.py", "tests/test_tls.py"], env=env, capture_output=True, text=True,
                          cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
