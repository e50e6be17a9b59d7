"""A Lambda handler that posts tunnel-format envelopes, for side-by-side benchmarks.

Sentry's Node extension only accepts the tunnel format (``POST /envelope``, the DSN in the
envelope header), so ``tools/bench.py`` drives both extensions with this handler: it posts
``envelopes`` envelopes (payload key, default 1) to ``SENTRY_TUNNEL_URL`` synchronously, one
connection each, before it returns — as ``@sentry/aws-serverless`` does with its flush at the end
of the handler. Each carries ``SENTRY_DSN`` in its header and the request id in its message.

Returns ``{"event_ids": [...], "request_id": "...", "envelopes": k, "statuses": [...]}``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from typing import Any, Dict, List

MAX_ENVELOPES = 5000
TUNNEL_URL = os.environ.get("SENTRY_TUNNEL_URL", "http://127.0.0.1:9000/envelope")
DSN = os.environ.get("SENTRY_DSN", "")


def _envelope(event_id: str, request_id: str, index: int) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"
    event = {
        "event_id": event_id, "level": "error", "platform": "python", "timestamp": now,
        "message": {"formatted": "tunnel message %d for request %s" % (index, request_id)},
        "extra": {"lambda": {"aws_request_id": request_id}},
        "sdk": {"name": "bench.tunnel", "version": "1.0"},
    }
    payload = json.dumps(event, separators=(",", ":")).encode()
    header = {"event_id": event_id, "dsn": DSN, "sent_at": now}
    item = {"type": "event", "content_type": "application/json", "length": len(payload)}
    return b"%s\n%s\n%s\n" % (json.dumps(header).encode(), json.dumps(item).encode(), payload)


def handler(event: Any, context: Any) -> Dict[str, Any]:
    options: Dict[str, Any] = event if isinstance(event, dict) else {}
    request_id = str(getattr(context, "aws_request_id", "unknown"))
    count = max(0, min(int(options.get("envelopes", 1) or 0), MAX_ENVELOPES))
    event_ids: List[str] = []
    statuses: List[int] = []
    for index in range(count):
        event_id = uuid.uuid4().hex
        req = urllib.request.Request(TUNNEL_URL, data=_envelope(event_id, request_id, index + 1), method="POST",
                                     headers={"Content-Type": "application/x-sentry-envelope"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
                statuses.append(resp.status)
        except OSError as exc:  # HTTPError and URLError are OSErrors: report, do not fail the function
            statuses.append(getattr(exc, "code", 0) or 0)
        event_ids.append(event_id)
    return {"event_ids": event_ids, "request_id": request_id, "envelopes": count, "statuses": statuses}
