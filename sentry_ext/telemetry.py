"""Telemetry API listener: receives Lambda's record batches and hands each decoded batch to one
callback (the pipeline parses it with ``telemetry_records`` and feeds ``invocations``).

The subscription itself is made by ``lambda_api`` during Init; this module loads after it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 2 * 1024 * 1024


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
                self.server.on_batch(json.loads(body) if body else [])
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

    def __init__(self, sock: socket.socket, on_batch: Callable[[Any], None]) -> None:
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.on_batch = on_batch  # gets each decoded batch (any JSON value: the callee validates)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                         name="sentry-ext-telemetry", daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("telemetry connection error (survived)")
