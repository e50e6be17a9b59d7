"""Shared set-up for the demo, the end-to-end tests and the benchmark: an /opt-like directory
holding the extension, and the function environment that points it at a fake upstream."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional

from tools.netutil import free_port

__all__ = ["free_port", "make_opt", "function_env", "local_dsn"]

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "bin" / "sentry-lambda-extension"
SAMPLE_FUNCTION = ROOT / "tools" / "sample_function"
EXTENSION_NAME = "sentry-lambda-extension"


def make_opt(base: Path) -> Path:
    """``base/opt/extensions/sentry-lambda-extension`` → symlink to this source tree's launcher."""
    opt = base / "opt"
    (opt / "extensions").mkdir(parents=True, exist_ok=True)
    link = opt / "extensions" / EXTENSION_NAME
    if not link.exists():
        os.symlink(LAUNCHER, link)
    return opt


def function_env(upstream_dsn: str, spool_dir: Path, python: Optional[str] = None,
                 **overrides: str) -> Dict[str, str]:
    """The function's environment: the real DSN for the extension, free loopback ports, a private spool."""
    env = {
        "SENTRY_DSN": upstream_dsn,
        "SENTRY_EXT_PORT": str(free_port()),
        "SENTRY_EXT_TELEMETRY_PORT": str(free_port()),
        "SENTRY_EXT_TELEMETRY_HOST": "127.0.0.1",
        "SENTRY_EXT_SPOOL_DIR": str(spool_dir),
        "SENTRY_EXT_STATE_FILE": str(spool_dir) + ".state",  # the exec wrapper's record, private per run
        "SENTRY_EXT_PYTHON": python or sys.executable,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.update(overrides)
    return env


def local_dsn(upstream_dsn: str, port: str) -> str:
    """The DSN the SDK uses: same key and project, host 127.0.0.1:<extension port>, plain http."""
    from urllib.parse import urlsplit

    parts = urlsplit(upstream_dsn)
    return "http://%s@127.0.0.1:%s%s" % (parts.username, port, parts.path)
