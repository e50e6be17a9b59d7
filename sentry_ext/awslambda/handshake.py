"""The record that tells the exec wrapper whether the extension relays, and on which port.

Lambda starts the runtime (and so ``bin/sentry-lambda-wrapper``) only after every extension has
registered, so the extension writes this record just before ``/register``; the wrapper points the
SDK at the extension only when the record says ``active`` on the port it expects, written by a
process that is still alive. Anything else (no record, ``inert``, a dead or foreign pid, garbage)
leaves the SDK sending straight to Sentry.

One line, ``<state> <pid> <port>``: ``active 812 5333`` or ``inert 812 0``. Written atomically
(a private temp file renamed over the record) with ``os`` calls only: this runs before the first
``/event/next``, where every import adds to the cold start. ``/tmp`` survives a sandbox reset, so
the pid is what makes a record from an earlier sandbox count for nothing: that process is gone.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

ACTIVE = "active"
INERT = "inert"
DEPENDENCIES = ("urllib3", "certifi")  # what the pipeline needs beyond the stdlib


def record(path: str, state: str, port: int = 0) -> Optional[str]:
    """Write ``state`` for this process; returns None, or why the record could not be written
    (then any older record is removed, so the wrapper leaves the SDK alone)."""
    line = ("%s %d %d\n" % (state, os.getpid(), port if state == ACTIVE else 0)).encode()  # utf-8: no codec import
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return None
    except OSError as exc:
        for stale in (tmp, path):
            try:
                os.unlink(stale)
            except OSError:
                pass
        return "%s: %s" % (exc.__class__.__name__, exc)


def missing_dependency() -> Optional[str]:
    """The first of DEPENDENCIES not found on ``sys.path`` (a few stat calls, no import), or None."""
    for name in DEPENDENCIES:
        if not any(os.path.isfile(os.path.join(entry or ".", name, "__init__.py")) for entry in sys.path):
            return name
    return None
