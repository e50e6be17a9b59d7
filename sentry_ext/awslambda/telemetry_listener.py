"""Telemetry API listener: receives Lambda's record batches and hands each decoded batch to one
callback (the pipeline parses it with ``telemetry_records`` and feeds ``invocations``).

Only Lambda is heard: batches are taken on the subscription's secret path only (see
``telemetry_endpoint``), decoded and bounded (size, nesting, time, connections) before the callback.
The subscription itself is made by ``lambda_api`` during Init; this module loads after it.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from typing import Any, Callable, List, Optional, Set, Tuple

from ..util import json_text
from ..util.http_server import RESPONSE_REASONS, BoundedHandler, BoundedServer
from ..util.http_numbers import content_length
from ..util.stats import Stats
from .telemetry_address import new_path

log = logging.getLogger(__name__)

# Hostile-input bounds of the listener. Lambda batches at most 1 MiB (maxBytes); platform records
# nest 4 deep, JSON function logs a little more.
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_READING_BYTES = 2 * MAX_BATCH_BYTES
MAX_CONNECTIONS = 8
MAX_DEPTH = 32
CLIENT_TIMEOUT_S = 5.0
EVICT_AFTER_S = 0.05
# Lambda posts one batch per connection the moment it connects: when the whole request is in the
# socket already at the accept (at most INLINE_PEEK_BYTES), the accept thread serves it itself and
# closes the connection: no thread started, no hand-off, and no read can block, nor any wait slow
# the accept loop down. Anything else (larger, later, kept alive) gets a thread as before.
INLINE_PEEK_BYTES = 65536
REFUSALS = {404: "not the subscribed path", 405: "not a POST", 411: "no single Content-Length",
            413: "batch too large", 503: "listener busy"}

# Called with each decoded batch; the list is the hook's: it may empty it once read (the pipeline
# does, so the decoded records are freed while their logs are handled).
BatchHook = Callable[[List[Any]], None]


class _Handler(BoundedHandler):
    """POST <the secret path> with a JSON array of records; everything else is refused unread."""

    server: "TelemetryListener"

    def setup(self) -> None:
        self.inline = threading.get_ident() == self.server.accept_ident
        if self.inline:  # the whole request is in the socket, the reply one write: no read can block
            self.timeout, self.disable_nagle_algorithm = None, False  # no syscalls to set either up
        else:
            self.timeout = CLIENT_TIMEOUT_S  # Lambda posts a whole batch at once: a slow client is not Lambda
        super().setup()

    def handle(self) -> None:
        if self.inline:  # one request, whole in the socket already (TelemetryListener.process_request)
            self.handle_one_request()
        else:
            super().handle()

    def _answer(self, status: int, close: bool = False) -> None:
        if close or self.inline:
            self.close_connection = True
        self.wfile.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n%s\r\n" % (
            status, RESPONSE_REASONS.get(status, "").encode("latin-1"), b"Connection: close\r\n" if close else b""))

    def _refuse(self, status: int) -> None:
        # Not Lambda, or not a batch: nothing is read or recorded. Logged once per status, not per
        # batch: a sender that keeps posting to the wrong place (AWS's RIE in Managed Instances
        # mode posts without the path) or a local process probing must not fill the log.
        self.server.stats.incr("telemetry_refused")
        if self.server.first_refusal(status):
            log.warning("telemetry listener refused %s %r: %d, %s (only Lambda, posting to the subscribed path, is "
                        "heard; AWS's RIE in Managed Instances mode posts without the path); later refusals are "
                        "counted as telemetry_refused, not logged", self.command, self.path[:80], status,
                        REFUSALS.get(status, "refused"))
        self._answer(status, close=True)

    def handle_expect_100(self) -> bool:
        # No "100 Continue" invites a body on a wrong path, or one of a length we would refuse.
        status = 404 if not self.server.is_ours(self.path) else self._length()[1]
        if status:
            self._refuse(status)
            return False
        return super().handle_expect_100()

    def _length(self) -> Tuple[int, int]:
        """``(the body's length, 0)``, or ``(0, the status refusing it)``."""
        lengths = self.headers.get_all("content-length") or []
        if self.headers.get("transfer-encoding") is not None or len(lengths) != 1:
            return 0, 411
        length = content_length(lengths[0])
        if length is None:
            return 0, 400
        return (0, 413) if length > MAX_BATCH_BYTES else (length, 0)

    def do_POST(self) -> None:
        if not self.server.is_ours(self.path):
            self._refuse(404)
            return
        length, status = self._length()
        if status:
            self._refuse(status)
            return
        if not self.server.reserve(length):
            self._refuse(503)
            return
        try:
            complete, batch = self._read_batch(length)
            if not complete:
                self.close_connection = True  # the client vanished mid-body
                return
            status = 400 if batch is None else self._deliver(batch)
        finally:
            self.server.release(length)
        self._answer(status)

    def _read_batch(self, length: int) -> Tuple[bool, Optional[List[Any]]]:
        """``(whole body read, the batch in it)``; the batch is None (counted as refused) if the
        body is not a JSON array. Memory: the bytes go once decoded to text, the text once parsed."""
        body = self.rfile.read(length)
        if len(body) != length:
            return False, None
        if not body:
            return True, []
        try:
            text = body.decode(json.detect_encoding(body), "surrogatepass")  # as json.loads(bytes) does
            body = b""
            batch = json_text.loads(text)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            batch = None
        if not isinstance(batch, list):
            self.server.stats.incr("telemetry_refused")
            return True, None
        return True, batch

    def _deliver(self, batch: List[Any]) -> int:
        # Filtered in place: the hook gets the only list holding the records, and may empty it.
        received = len(batch)
        batch[:] = [item for item in batch if within_depth(item, MAX_DEPTH)]
        if len(batch) != received:
            self.server.stats.incr("telemetry_records_too_deep", received - len(batch))
        try:
            self.server.on_batch(batch)
        except Exception:
            log.exception("telemetry listener error (survived)")
            return 500  # Lambda retries the batch
        return 200

    def do_GET(self) -> None:
        self._refuse(404 if not self.server.is_ours(self.path) else 405)

    do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_GET


def within_depth(value: Any, limit: int) -> bool:
    """True if ``value`` nests lists and objects at most ``limit`` deep (iterative: no recursion).

    Runs on every record: it walks one level of containers at a time and keeps only containers,
    so a scalar (most of a record) costs one ``isinstance`` and no allocation."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 1
    while level:
        if depth > limit:
            return False
        below = []
        for item in level:
            for child in (item.values() if isinstance(item, dict) else item):
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
        depth += 1
    return True


def _whole_request_waiting(conn: socket.socket) -> bool:
    """True if a complete request with a Content-Length body (at most INLINE_PEEK_BYTES) is in
    ``conn``'s receive buffer now; nothing is consumed, nothing waited for."""
    try:
        data = conn.recv(INLINE_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):  # BlockingIOError: nothing there yet
        return False
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = None
    for line in data[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length" and length is not None):
            return False
        if name == b"content-length":
            length = content_length(value.decode("latin-1").strip())
            if length is None:
                return False
    return len(data) >= head_end + 4 + (length or 0)


class TelemetryListener(BoundedServer):
    """The Telemetry API's HTTP destination, served from daemon threads: hands each batch (a list
    of records, each nesting at most MAX_DEPTH deep) to ``on_batch``.

    Only POSTs on ``path`` (the secret one in the subscription URI) are read; connections, the
    bodies in reading and the time a client may take are bounded like the ingest's.
    """

    request_queue_size = 16
    # Lambda sends a whole batch the moment it connects (loopback: well under a millisecond per
    # 100 KiB), so a connection silent for this long is not Lambda and yields its slot at the cap.
    evict_after_s = EVICT_AFTER_S

    def __init__(self, sock: socket.socket, on_batch: BatchHook, stats: Optional[Stats] = None,
                 path: Optional[str] = None) -> None:
        super().__init__(sock, _Handler, MAX_CONNECTIONS, MAX_READING_BYTES, stats or Stats(), "telemetry_")
        self.on_batch = on_batch
        self.path = path or new_path()
        self._path_bytes = self.path.encode("ascii")
        self._refusals_logged: Set[int] = set()  # statuses whose first refusal was logged
        self._refusals_lock = threading.Lock()

    accept_ident: Optional[int] = None  # the accept thread's, once it served a request itself

    def process_request(self, request: Any, client_address: Any) -> None:
        if _whole_request_waiting(request) and self._slots.acquire(blocking=False):
            self.accept_ident = threading.get_ident()
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                self._slots.release()
            return
        super().process_request(request, client_address)

    def first_refusal(self, status: int) -> bool:
        """Whether this is the first refusal with ``status`` (the one to log)."""
        with self._refusals_lock:
            if status in self._refusals_logged:
                return False
            self._refusals_logged.add(status)
            return True

    def is_ours(self, path: str) -> bool:
        return hmac.compare_digest(path.encode("latin-1", "replace"), self._path_bytes)

    def start(self, name: str = "sentry-ext-telemetry") -> None:
        super().start(name)
