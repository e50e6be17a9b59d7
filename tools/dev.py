"""Developer entry point: ``python3 tools/dev.py demo`` and ``python3 tools/dev.py test``.

Both create ``.venv`` with the running interpreter on first use and install the project with
its test extras (skipped when ``setup.cfg`` has not changed since), then run inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".sentry-ext-installed"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create the venv and install the project (editable, with test extras) if needed."""
    if not PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[test]"],
                   cwd=ROOT, check=True)
    STAMP.write_text(_fingerprint())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["demo", "test"])
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed to the demo or to pytest")
    opts = parser.parse_args(argv)
    ensure_venv()
    if opts.command == "demo":
        cmd = [str(PYTHON), "-m", "tools.demo", *opts.args]
    else:
        cmd = [str(PYTHON), "-m", "pytest", "-q", *opts.args]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
