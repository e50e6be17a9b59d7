"""A stub of the Lambda Extensions and Telemetry APIs that times one extension's start.

A real HTTP server on 127.0.0.1: it records when ``register`` and the first ``event/next`` arrive
and samples the process's CPU time and RSS at that moment; ``next`` is held until an event is
pushed. Used by ``tools/bench.py`` and ``tools/build_layer.py --measure``.
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
import uuid
from typing import Any, Deque, Dict, List, Optional, Tuple

from tools.netutil import BodyError, read_body
from tools.procfs import cpu_precise_ms, status_kib

EXTENSION_PREFIX = "/2020-01-01/extension"
LONG_POLL_MAX_S = 120.0
MAX_BODY_BYTES = 1024 * 1024


# ------------------------------------------------------------------------- Extensions API stub


class ExtApiStub:
    """A real HTTP server on 127.0.0.1 answering the Extensions and Telemetry APIs.

    It records when ``register`` and the first ``event/next`` arrive (``time.monotonic()``), and
    samples the CPU time and RSS of ``watch_pid`` the moment that first ``next`` arrives (the
    extension is then blocked waiting for the answer). ``next`` is held until an event is pushed.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: Deque[bytes] = collections.deque()
        self.calls: List[Tuple[float, str]] = []
        self.register_t: Optional[float] = None
        self.first_next_t: Optional[float] = None
        self.first_next_cpu_ms: Optional[float] = None
        self.first_next_rss_kib: Optional[int] = None
        self.watch_pid: Optional[int] = None
        self.names: List[str] = []
        self.subscribed = False
        self._stopping = False
        self._server: Optional[http.server.ThreadingHTTPServer] = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return "127.0.0.1:%d" % self._server.server_address[1]

    def start(self) -> "ExtApiStub":
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _body(self) -> bytes:
                try:
                    return read_body(self.rfile, self.headers, MAX_BODY_BYTES)
                except BodyError:
                    self.close_connection = True
                    return b""

            def _send(self, status: int, body: bytes, headers: Optional[Dict[str, str]] = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                now = time.monotonic()
                self._body()
                if self.path == EXTENSION_PREFIX + "/register":
                    with stub.cond:
                        stub.calls.append((now, "register"))
                        if stub.register_t is None:
                            stub.register_t = now
                        stub.names.append(self.headers.get("Lambda-Extension-Name") or "")
                    self._send(200, b'{"functionName":"bench-function","functionVersion":"$LATEST",'
                                    b'"handler":"app.handler"}',
                               {"Lambda-Extension-Identifier": str(uuid.uuid4())})
                else:  # init/error, exit/error
                    with stub.cond:
                        stub.calls.append((now, self.path.rsplit("/", 2)[-2] + "/error"))
                    self._send(202, b'{"status":"OK"}')

            def do_PUT(self) -> None:
                now = time.monotonic()
                self._body()
                with stub.cond:
                    stub.calls.append((now, "telemetry"))
                    stub.subscribed = True
                self._send(200, b"OK")

            def do_GET(self) -> None:
                now = time.monotonic()
                if self.path != EXTENSION_PREFIX + "/event/next":
                    self._send(404, b'{"errorType":"NotFound"}')
                    return
                pid = stub.watch_pid
                first = False
                with stub.cond:
                    stub.calls.append((now, "next"))
                    if stub.first_next_t is None:
                        stub.first_next_t = now
                        first = True
                        stub.cond.notify_all()
                if first and pid is not None:
                    cpu, rss = cpu_precise_ms(pid), status_kib(pid, "VmRSS")
                    with stub.cond:
                        stub.first_next_cpu_ms, stub.first_next_rss_kib = cpu, rss
                        stub.cond.notify_all()
                event = stub._take_event()
                if event is None:
                    self.close_connection = True
                    self._send(500, b'{"errorType":"Extension.SandboxGone"}')
                else:
                    self._send(200, event, {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up on its long poll (killed, or shut down)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="bench-ext-api", daemon=True).start()
        return self

    def _take_event(self) -> Optional[bytes]:
        deadline = time.monotonic() + LONG_POLL_MAX_S
        with self.cond:
            while not self.events:
                remaining = deadline - time.monotonic()
                if self._stopping or remaining <= 0:
                    return None
                self.cond.wait(min(remaining, 1.0))
            return self.events.popleft()

    def push_shutdown(self, window_ms: int = 2000) -> None:
        """Answer the pending (or next) ``event/next`` with SHUTDOWN."""
        event = {"eventType": "SHUTDOWN", "shutdownReason": "spindown",
                 "deadlineMs": int(time.time() * 1000) + window_ms}
        with self.cond:
            self.events.append(json.dumps(event).encode())
            self.cond.notify_all()

    def wait_first_next(self, timeout: float) -> bool:
        """Wait until the first ``next`` arrived and was sampled."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.first_next_t is None or (self.watch_pid is not None and self.first_next_cpu_ms is None):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.5))
            return True

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ExtApiStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
