"""Logging to stdout (CloudWatch adds timestamps): one line per lifecycle event."""

from __future__ import annotations

import logging
import sys

FORMAT = "[sentry-lambda-extension] %(levelname)s %(message)s"
DEBUG_FORMAT = "[sentry-lambda-extension] %(levelname)s %(threadName)s %(name)s: %(message)s"


def setup(level: str) -> None:
    """Send the package's logs to stdout at ``level``; idempotent."""
    logger = logging.getLogger("sentry_ext")
    if getattr(logger, "_sentry_ext_configured", False):
        logger.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(DEBUG_FORMAT if level == "DEBUG" else FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logger._sentry_ext_configured = True  # type: ignore[attr-defined]
