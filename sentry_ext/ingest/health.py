"""What ``GET /health`` says about the relay: ``ok``, or ``degraded`` with the reasons.

Degraded while the upstream is failing (failed attempts: refused, timed out, a retryable
status, whether or not the request is retried; the forwarder's UpstreamHealth counts them until
an attempt gets an answer) or
while the queue is over half full by items or bytes (ingest will soon answer 429).
"""

from __future__ import annotations

from typing import Any, Dict, List


def assess(upstream_failures: int, queued_items: int, max_items: int, queued_bytes: int,
           max_bytes: int) -> Dict[str, Any]:
    """The ``status``, ``reasons`` and ``upstream_failures`` fields of ``/health``."""
    reasons: List[str] = []
    if upstream_failures:
        reasons.append("upstream failing: %d consecutive failed attempt(s), retrying" % upstream_failures)
    if queued_items * 2 > max_items or queued_bytes * 2 > max_bytes:
        reasons.append("queue over half full: %d/%d requests, %d/%d bytes" % (
            queued_items, max_items, queued_bytes, max_bytes))
    return {"status": "degraded" if reasons else "ok", "reasons": reasons,
            "upstream_failures": upstream_failures}
