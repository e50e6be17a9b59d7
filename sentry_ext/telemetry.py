"""Telemetry API listener: learns when the runtime finished each invocation (platform.runtimeDone).

The subscription itself is made by ``lambda_api`` during Init; this module loads after it.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple

log = logging.getLogger(__name__)

KEEP_REQUESTS = 64  # runtimeDone records remembered (bounded memory)
MAX_BATCH_BYTES = 2 * 1024 * 1024


class RuntimeDoneTracker:
    """Remembers recent ``platform.start``/``platform.runtimeDone`` records per request; the main
    thread waits on them."""

    KINDS = {"platform.start": "start", "platform.runtimeDone": "runtimeDone"}

    def __init__(self) -> None:
        self._seen: "collections.OrderedDict[str, Dict[str, Dict[str, Any]]]" = collections.OrderedDict()
        self._cond = threading.Condition()

    def record(self, events: Any) -> None:
        if not isinstance(events, list):
            return
        with self._cond:
            for event in events:
                if not isinstance(event, dict):
                    continue
                kind = self.KINDS.get(event.get("type"))  # type: ignore[arg-type]
                record = event.get("record")
                if kind is None or not isinstance(record, dict) or not isinstance(record.get("requestId"), str):
                    continue
                self._seen.setdefault(record["requestId"], {})[kind] = record
                while len(self._seen) > KEEP_REQUESTS:
                    self._seen.popitem(last=False)
            self._cond.notify_all()

    def wait(self, request_id: str, deadline: float, kinds: Tuple[str, ...] = ("runtimeDone",)) -> Optional[Dict[str, Any]]:
        """The first record of ``kinds`` seen for ``request_id``, waiting until ``deadline``
        (monotonic); None on timeout."""
        with self._cond:
            while True:
                seen = self._seen.get(request_id, {})
                for kind in kinds:
                    if kind in seen:
                        return seen[kind]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "TelemetryListener"
    timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Debug only, and never about telemetry records themselves.
        pass

    def do_POST(self) -> None:
        status = 200
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BATCH_BYTES or length < 0:
                status = 413
                self.close_connection = True
            else:
                body = self.rfile.read(length)
                self.server.tracker.record(json.loads(body) if body else [])
        except (ValueError, UnicodeDecodeError):
            status = 400
        except Exception:
            log.exception("telemetry listener error (survived)")
            status = 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class TelemetryListener(ThreadingHTTPServer):
    """HTTP listener on a socket bound during Init, served from a daemon thread."""

    daemon_threads = True
    request_queue_size = 16

    def __init__(self, sock: socket.socket, tracker: RuntimeDoneTracker) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.tracker = tracker

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                         name="sentry-ext-telemetry", daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("telemetry connection error (survived)")
