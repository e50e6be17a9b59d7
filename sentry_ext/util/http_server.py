"""An HTTP server for hostile local clients, shared by the ingest and the Telemetry listener.

``BoundedServer`` runs on a socket bound earlier (the port is held from the first ms), caps
concurrent connections (at the cap the connection that has waited longest on its client yields)
and the bytes of bodies being read; ``BoundedHandler`` reads headers with the bounded parser of
``headers.py`` (not ``email.parser``) and marks when it waits on its client.
"""

from __future__ import annotations

import io
import logging
import os
import selectors
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Type

from .headers import HeaderError, read_headers
from .stats import Stats

log = logging.getLogger(__name__)

# At the connection cap, a new connection takes the slot of the one that has waited longest on its
# client (idle keep-alive, or a request trickled in), once it has waited this long.
EVICT_AFTER_S = 0.5
EVICT_WAIT_S = 1.0  # how long the accept loop waits for the evicted connection's slot
RESPONSE_REASONS = {code: reason for code, (reason, _) in BaseHTTPRequestHandler.responses.items()}
BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
              b"Connection: close\r\nRetry-After: 1\r\n\r\n")


class BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, eviction and a budget for bodies in reading.

    Counters go to ``stats`` as ``<prefix>connections_refused`` and ``<prefix>connections_evicted``.
    """

    daemon_threads = True
    request_queue_size = 128
    evict_after_s = EVICT_AFTER_S  # how long a connection must have waited on its client to yield

    def __init__(self, sock: socket.socket, handler: Type[BaseHTTPRequestHandler], max_connections: int,
                 max_reading_bytes: int, stats: Stats, prefix: str = "") -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.stats = stats
        self.counter_prefix = prefix
        self.max_reading_bytes = max_reading_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        # Bodies being read count too: 64 connections x a 4 MiB cap must not mean 256 MiB.
        self._reading_bytes = 0
        self._reading_lock = threading.Lock()
        self._waiting: Dict[socket.socket, float] = {}  # connection -> since when it waits on its client
        self._waiting_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # shutdown() wakes the accept loop through it

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept until ``shutdown``: blocked in poll with no timeout, so an idle server never
        wakes (``serve_forever`` wakes every poll interval to look for a shutdown request)."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping:
                    ready = selector.select()
                    if self._stopping:
                        break
                    if any(key.fileobj is self for key, _ in ready):
                        self._handle_request_noblock()  # type: ignore[attr-defined]
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the accept loop and wait until it has stopped (at once if it never started)."""
        self._stopping = True
        if self._thread is None:
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def process_request(self, request: Any, client_address: Any) -> None:
        # Cap concurrent connections: a flood of idle sockets must not become a flood of threads,
        # nor starve the real client: at the cap, the longest-waiting idle or trickling connection yields.
        if not self._slots.acquire(blocking=False) and not (
                self._evict() and self._slots.acquire(timeout=EVICT_WAIT_S)):
            self.stats.incr(self.counter_prefix + "connections_refused")
            try:
                request.sendall(BUSY_REPLY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def reserve(self, nbytes: int) -> bool:
        """Reserve memory for a body about to be read; False when bodies in reading would exceed
        ``max_reading_bytes`` (the caller refuses the request)."""
        with self._reading_lock:
            if self._reading_bytes + nbytes > self.max_reading_bytes:
                return False
            self._reading_bytes += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._reading_lock:
            self._reading_bytes -= nbytes

    def client_wait(self, conn: socket.socket, waiting: bool) -> None:
        """Mark ``conn`` as waiting on its client (from now) or as busy with a complete request."""
        with self._waiting_lock:
            if waiting:
                self._waiting[conn] = time.monotonic()
            else:
                self._waiting.pop(conn, None)

    def _evict(self) -> bool:
        """Close the connection that has waited longest on its client, if it waited ``evict_after_s``."""
        with self._waiting_lock:
            if not self._waiting:
                return False
            conn, since = min(self._waiting.items(), key=lambda item: item[1])
            if time.monotonic() - since < self.evict_after_s:
                return False
            del self._waiting[conn]
        try:
            conn.shutdown(socket.SHUT_RDWR)  # its handler reads EOF, ends, and frees the slot
        except OSError:
            pass
        self.stats.incr(self.counter_prefix + "connections_evicted")
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client reset, vanished or was evicted: routine
            log.debug("connection ended: %s", sys.exc_info()[1])
            return
        log.exception("%s connection error (survived)", self.counter_prefix.rstrip("_") or "ingest")


class _Received(io.RawIOBase):
    """A connection's bytes for ``BufferedReader``, as ``socket.makefile`` gives them, except that
    a receive timed out by the kernel (SO_RCVTIMEO: ``EAGAIN``) raises ``socket.timeout``."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._recv_into = sock.recv_into

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # type: ignore[override]
        try:
            return self._recv_into(buffer)
        except BlockingIOError:
            raise socket.timeout("client timed out") from None


class BoundedHandler(BaseHTTPRequestHandler):
    """Request line and headers read within bounds; waiting on the client is visible to the server."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: BoundedServer
    sys_version = ""

    def setup(self) -> None:
        # The client's time limit (``timeout``) is kept by the kernel (SO_RCVTIMEO, SO_SNDTIMEO),
        # not the socket module: with a module timeout every recv and send polls first, a syscall
        # and a GIL hand-off more each. A receive that runs out of time raises socket.timeout
        # (``_Received``), a send BlockingIOError: either way the connection ends, as before.
        timeout, self.timeout = self.timeout, None
        super().setup()
        if timeout is not None:
            limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            self.rfile.close()  # makefile's: only its reference to the socket goes
            self.rfile = io.BufferedReader(_Received(self.connection), io.DEFAULT_BUFFER_SIZE)

    def handle_one_request(self) -> None:
        """One request: ``BaseHTTPRequestHandler``'s ``handle_one_request`` and ``parse_request`` in
        one, with the bounded header reader of ``headers.py`` (not ``email.parser``); whatever is
        refused is answered here."""
        server, conn = self.server, self.connection
        server.client_wait(conn, True)  # waiting on the client; ``_post`` marks it busy once a request is in
        try:
            self.raw_requestline = raw = self.rfile.readline(65537)
            if len(raw) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not raw:
                self.close_connection = True
                return
            # The request line is in: the client gets EVICT_AFTER_S afresh for its headers and body.
            server.client_wait(conn, True)
            self.command = None  # type: ignore[assignment]
            self.request_version = "HTTP/0.9"
            self.close_connection = True
            self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
            words = self.requestline.split()
            if len(words) != 3:
                if words:
                    self.send_error(400, "Bad request syntax (%r)" % self.requestline[:100])
                return
            command, self.path, version = words
            if version != "HTTP/1.1" and version != "HTTP/1.0":
                self.send_error(505 if version.startswith("HTTP/") else 400, "Unsupported HTTP version")
                return
            self.command, self.request_version = command, version
            try:
                self.headers = headers = read_headers(self.rfile)  # type: ignore[assignment]
            except HeaderError as exc:
                self.send_error(exc.status, str(exc))
                return
            connection = (headers.get("connection") or "").lower()
            self.close_connection = version == "HTTP/1.0" and connection != "keep-alive" or connection == "close"
            expect = headers.get("expect")
            if (expect is not None and expect.lower() == "100-continue" and version == "HTTP/1.1"
                    and not self.handle_expect_100()):
                return
            method = getattr(self, "do_" + command, None)
            if method is None:
                self.send_error(501, "Unsupported method (%r)" % command)
                return
            method()
        except socket.timeout as exc:  # a read or a write timed out: discard this connection
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True

    def finish(self) -> None:
        self.server.client_wait(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.client_address[0], *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.client_address[0], *args)
