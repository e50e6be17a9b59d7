"""Logging to stdout (CloudWatch adds timestamps): one line per lifecycle event.

``logging`` is on the start-up budget (main.py), so the start-up path (before the first
``/event/next``) holds ``get()`` stand-ins and only ``defer()``s the set-up; ``logging`` loads at
the first log call or when ``setup()`` runs on the background init thread.
"""

from __future__ import annotations

import sys
import threading

FORMAT = "[sentry-lambda-extension] %(levelname)s %(message)s"
DEBUG_FORMAT = "[sentry-lambda-extension] %(levelname)s %(threadName)s %(name)s: %(message)s"

_lock = threading.Lock()
_deferred_level = None  # type: str | None


def setup(level: str) -> None:
    """Send the package's logs to stdout at ``level``; idempotent and thread-safe."""
    import logging

    with _lock:
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


def defer(level: str) -> None:
    """Remember ``level``: ``setup(level)`` runs when a ``get()`` logger is first used (or sooner)."""
    global _deferred_level
    _deferred_level = level


def ensure() -> None:
    """Run the deferred ``setup``, if any (cheap once done)."""
    global _deferred_level
    level = _deferred_level
    if level is not None:
        setup(level)
        _deferred_level = None


class LazyLogger:
    """Stands in for ``logging.getLogger(name)``; imports and sets up logging at first use."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger = None

    def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
        logger = self._logger
        if logger is None:
            import logging

            ensure()
            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attr)


def get(name: str) -> LazyLogger:
    """A logger for ``name`` that costs nothing until it logs."""
    return LazyLogger(name)


def shutdown() -> None:
    """Flush and close the handlers, if logging was ever loaded."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()  # type: ignore[attr-defined]
