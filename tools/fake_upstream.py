"""A fake Sentry ingest server for tests and benchmarks.

It records every request it receives (decoded body, parsed envelope, parsed auth) and answers
with scripted replies, so tests can inject faults: error statuses, rate-limit headers, slow
replies, connections dropped or reset after the request, responses cut off mid-body, and idle
keep-alive connections closed the way Sentry's load balancer closes them.

This module is the test oracle for the extension: it deliberately does NOT import the project's
``sentry_ext`` package and carries its own small envelope parser.

Usage::

    from tools.fake_upstream import FakeUpstream, Reply

    with FakeUpstream() as up:
        up.script([Reply(status=429, headers={"X-Sentry-Rate-Limits": "60::organization"})])
        ...  # point the code under test at up.dsn()
        assert up.wait_for(lambda reqs: len(reqs) >= 1, timeout=5)

CLI: ``python -m tools.fake_upstream [--port N] [--delay-ms N]`` serves on 127.0.0.1 until
Ctrl-C and logs one line per request.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import logging
import signal
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qsl, urlsplit

from tools.netutil import BodyError, read_body

try:  # optional, like in sentry-python
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "Envelope",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "log_item_problems",
    "main",
    "parse_envelope",
]

ACTIONS = ("respond", "drop", "reset", "drop_mid_response", "close_unread")

#: Largest request body (compressed or not) the fake accepts; larger requests get 413.
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Largest decompressed body; beyond it decoding fails with ``decode_error``.
MAX_DECODED_BYTES = 512 * 1024 * 1024
#: Socket timeout while a request is being read (request line seen, headers/body pending).
READ_TIMEOUT_S = 30.0
#: Bounds for the chunked-transfer reader and the per-connection request loop.
MAX_CHUNKS = 1_000_000
MAX_TRAILER_LINES = 100
MAX_REQUESTS_PER_CONNECTION = 1_000_000
BLACK_HOLE_MAX_S = 60.0  # a request on a forgotten connection is held at most this long
MAX_LINE = 65536


# --------------------------------------------------------------------------------------------
# Envelope parsing (independent of sentry_ext on purpose)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Envelope:
    """A parsed envelope: the header and a list of ``(item_header, payload)``."""

    header: Dict[str, Any]
    items: List[Tuple[Dict[str, Any], bytes]] = dataclasses.field(default_factory=list)

    @property
    def item_types(self) -> List[str]:
        return [str(h.get("type")) for h, _ in self.items]

    @property
    def event_id(self) -> Optional[str]:
        value = self.header.get("event_id")
        return value if isinstance(value, str) else None


def _json_object_line(line: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def parse_envelope(data: bytes) -> Envelope:
    """Parse an envelope strictly; raise ``ValueError`` on anything malformed.

    Items with a ``length`` take exactly that many bytes, which must be followed by ``\\n`` or
    the end of the data; items without one run to the next ``\\n`` (or the end). The trailing
    newline after the last payload is optional.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError("envelope must be bytes")
    data = bytes(data)
    if not data.strip():
        raise ValueError("empty envelope")
    end = len(data)
    nl = data.find(b"\n")
    header_line = data if nl < 0 else data[:nl]
    header = _json_object_line(header_line, "envelope header")
    pos = end if nl < 0 else nl + 1
    items: List[Tuple[Dict[str, Any], bytes]] = []
    # Every iteration consumes at least the item header line's newline, so the loop is bounded
    # by len(data); the explicit cap is belt and braces.
    for _ in range(end + 1):
        if pos >= end:
            break
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos:nl]
        index = len(items)
        if not line.strip():
            raise ValueError(f"item {index}: empty item header at byte {pos}")
        item_header = _json_object_line(line, f"item {index} header")
        item_type = item_header.get("type")
        if not isinstance(item_type, str) or not item_type:
            raise ValueError(f"item {index}: missing or invalid 'type'")
        pos = end if nl < 0 else nl + 1
        length = item_header.get("length")
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise ValueError(f"item {index}: invalid length {length!r}")
            if pos + length > end:
                raise ValueError(
                    f"item {index}: length {length} exceeds the remaining {end - pos} bytes"
                )
            payload = data[pos : pos + length]
            pos += length
            if pos < end:
                if data[pos : pos + 1] != b"\n":
                    raise ValueError(f"item {index}: payload not followed by a newline")
                pos += 1
        else:
            nl = data.find(b"\n", pos)
            if nl < 0:
                payload = data[pos:]
                pos = end
            else:
                payload = data[pos:nl]
                pos = nl + 1
        items.append((item_header, payload))
    else:  # pragma: no cover - unreachable, see above
        raise ValueError("envelope parser did not terminate")
    return Envelope(header=header, items=items)


LOG_CONTENT_TYPE = "application/vnd.sentry.items.log+json"
LOG_LEVELS = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
ATTRIBUTE_TYPES = {"string": (str,), "integer": (int,), "double": (float, int), "boolean": (bool,), "array": (list,)}


def _hex(value: Any, size: int) -> bool:
    return isinstance(value, str) and len(value) == size and all(c in "0123456789abcdef" for c in value)


def log_item_problems(header: Dict[str, Any], payload: bytes) -> List[str]:
    """What is wrong with a ``log`` item by the Sentry Logs protocol (empty list: valid).

    Header ``type: log``, the log content type and an ``item_count`` equal to the number of logs
    (1-100); payload ``{"items": [...]}``, each log with a numeric ``timestamp``, a 32-hex
    ``trace_id``, a known ``level``, a string ``body``, an optional ``span_id`` (16 hex) and
    ``severity_number`` (1-24, in its level's range) and ``attributes`` of ``{value, type}``.
    """
    problems: List[str] = []
    if header.get("type") != "log":
        problems.append(f"item type {header.get('type')!r} is not 'log'")
    if header.get("content_type") != LOG_CONTENT_TYPE:
        problems.append(f"content_type {header.get('content_type')!r}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return problems + [f"payload is not JSON: {exc}"]
    logs = data.get("items") if isinstance(data, dict) else None
    if not isinstance(logs, list):
        return problems + ["payload has no 'items' list"]
    count = header.get("item_count")
    if isinstance(count, bool) or count != len(logs):
        problems.append(f"item_count {count!r} but {len(logs)} logs")
    if not 1 <= len(logs) <= 100:
        problems.append(f"{len(logs)} logs in one item (1-100 allowed)")
    for index, log in enumerate(logs):
        where = f"log {index}"
        if not isinstance(log, dict):
            problems.append(f"{where} is not an object")
            continue
        timestamp = log.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) or timestamp <= 0:
            problems.append(f"{where}: timestamp {timestamp!r}")
        if not _hex(log.get("trace_id"), 32):
            problems.append(f"{where}: trace_id {log.get('trace_id')!r}")
        if "span_id" in log and not _hex(log["span_id"], 16):
            problems.append(f"{where}: span_id {log['span_id']!r}")
        level = log.get("level")
        if level not in LOG_LEVELS:
            problems.append(f"{where}: level {level!r}")
        if not isinstance(log.get("body"), str):
            problems.append(f"{where}: body is not a string")
        if "severity_number" in log and level in LOG_LEVELS:
            number = log["severity_number"]
            low = LOG_LEVELS[level]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= low + 3:
                problems.append(f"{where}: severity_number {number!r} for level {level!r}")
        attributes = log.get("attributes", {})
        if not isinstance(attributes, dict):
            problems.append(f"{where}: attributes is not an object")
            continue
        for name, attribute in attributes.items():
            kind = attribute.get("type") if isinstance(attribute, dict) else None
            value = attribute.get("value") if isinstance(attribute, dict) else None
            types = ATTRIBUTE_TYPES.get(kind) if isinstance(kind, str) else None
            if types is None or not isinstance(value, types) or (kind in ("integer", "double") and isinstance(value, bool)):
                problems.append(f"{where}: attribute {name!r} is not a typed value: {attribute!r}")
    return problems


# --------------------------------------------------------------------------------------------
# Body decoding and auth parsing
# --------------------------------------------------------------------------------------------


def _inflate(data: bytes, wbits: int) -> bytes:
    """Decompress zlib (15), raw deflate (-15) or gzip (31, every member), bounded in size."""
    out: List[bytes] = []
    total = 0
    rest = data
    for _ in range(10_000):  # gzip members
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(rest, MAX_DECODED_BYTES - total + 1)
        total += len(chunk)
        out.append(chunk)
        if total > MAX_DECODED_BYTES or d.unconsumed_tail:
            raise ValueError(f"decoded body exceeds {MAX_DECODED_BYTES} bytes")
        if not d.eof:
            raise ValueError("truncated compressed stream")
        rest = d.unused_data
        if not rest.strip(b"\x00"):  # done (gzip allows zero padding after the last member)
            return b"".join(out)
        if wbits != 31:
            raise ValueError("trailing garbage after compressed stream")
    raise ValueError("too many gzip members")


def decode_body(raw: bytes, content_encoding: str) -> bytes:
    """Undo ``Content-Encoding`` (a comma list, applied in order, undone in reverse)."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    body = raw
    for coding in reversed(codings):
        if coding in ("identity", ""):
            continue
        if coding in ("gzip", "x-gzip"):
            try:
                body = _inflate(body, 31)
            except zlib.error as exc:
                raise ValueError(f"gzip: {exc}") from exc
        elif coding == "deflate":
            try:
                body = _inflate(body, 15)  # RFC 9110 says zlib-wrapped ...
            except (zlib.error, ValueError):
                try:
                    body = _inflate(body, -15)  # ... but raw deflate is common
                except zlib.error as exc:
                    raise ValueError(f"deflate: {exc}") from exc
        elif coding == "br":
            if brotli is None:
                raise ValueError("br: the brotli module is not installed")
            try:
                body = brotli.decompress(body)
            except Exception as exc:  # brotli.error
                raise ValueError(f"br: {exc}") from exc
        else:
            raise ValueError(f"unsupported content-encoding {coding!r}")
    return body


def parse_sentry_auth(value: str) -> Dict[str, str]:
    """Parse ``Sentry sentry_key=..., sentry_version=7, ...`` into a dict."""
    value = value.strip()
    if value[:7].lower() == "sentry ":
        value = value[7:]
    result: Dict[str, str] = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key = key.strip()
        if sep and key:
            result[key] = val.strip()
    return result


# --------------------------------------------------------------------------------------------
# Reply / Recorded
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    """What the fake answers to one request.

    ``body=None`` means: ``{"id": "<event_id>"}`` for a 2xx status, a small JSON ``detail``
    object otherwise. ``delay_s`` adds to ``FakeUpstream.delay_s``. ``headers`` are sent
    verbatim (``Content-Length`` is always computed by the fake; ``Content-Type`` defaults to
    ``application/json``).

    Actions: ``respond``; ``drop`` (read the request, close without a reply);
    ``reset`` (read the request, close with SO_LINGER 0 so the client sees an RST);
    ``drop_mid_response`` (send status line, headers and half the body, then close);
    ``close_unread`` (close the connection as soon as the request line arrives, neither reading
    nor recording the request: an idle keep-alive close that crossed the request on the wire;
    counted in ``idle_closes``).
    """

    status: int = 200
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)
    body: Optional[bytes] = None
    delay_s: float = 0.0
    action: str = "respond"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {ACTIONS}")
        if not 100 <= int(self.status) <= 999:
            raise ValueError(f"invalid status {self.status!r}")
        if self.delay_s < 0:
            raise ValueError("delay_s must be >= 0")


@dataclasses.dataclass
class Recorded:
    """One request as received (appended before the reply is sent, after the body was read)."""

    t: float
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    raw_body: bytes
    body: bytes
    envelope: Optional[Envelope]
    status: int
    auth: Dict[str, str]
    decode_error: Optional[str] = None
    #: Extra (not in the original brief): why ``envelope`` is None on an envelope path.
    envelope_error: Optional[str] = None
    #: Extra: the request target exactly as sent (path plus query string).
    target: str = ""
    #: Extra: the action the fake took for this request.
    action: str = "respond"

    @property
    def item_types(self) -> List[str]:
        return self.envelope.item_types if self.envelope is not None else []


def _is_envelope_path(path: str) -> bool:
    return path == "/envelope" or path.endswith("/envelope/") or path.endswith("/envelope")


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class _DropConnection(Exception):
    """Raised inside the handler to abandon the connection without a reply."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "FakeSentry/1.0"
    sys_version = ""
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("fake upstream %s: " + format, self.address_string(), *args)

    # -- connection lifecycle --------------------------------------------------------------

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # TLS: handshake here, off the accept loop
            self.request.settimeout(READ_TIMEOUT_S)
            upstream = self.server.upstream
            if upstream.handshake_rtts > 0 and upstream.delay_s > 0:
                time.sleep(upstream.handshake_rtts * upstream.delay_s)  # the round trips a remote handshake takes
            self.request.do_handshake()
            self.server.upstream._note_handshake(self.request.session_reused)
        super().setup()
        self.server.upstream._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.upstream._connection_closed(self.connection)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            if self.close_connection:
                break
            self.handle_one_request()
        self.close_connection = True

    # -- one request -----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        upstream = self.server.upstream
        self.close_connection = True
        try:
            idle = upstream.idle_close_s
            self.connection.settimeout(idle if idle is not None and idle > 0 else None)
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
        except socket.timeout:
            try:  # closed before it is counted: whoever waits on the count finds the connection closed
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            upstream._note_idle_close()
            return
        except OSError:
            return
        if not self.raw_requestline:
            return
        if upstream._is_forgotten(self.connection):
            self._black_hole()
            return
        if upstream._close_unread_next():
            upstream._note_idle_close()
            return  # closed with the request unread: the client gets a reset or an EOF, no reply
        try:
            self.connection.settimeout(READ_TIMEOUT_S)
            if len(self.raw_requestline) > MAX_LINE:
                self.requestline = ""
                self.request_version = ""
                self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # sends its own error reply
                return
            self._serve()
            self.wfile.flush()
        except _DropConnection:
            self.close_connection = True
        except (socket.timeout, OSError) as exc:
            logger.debug("fake upstream: connection error: %r", exc)
            self.close_connection = True

    def _read_body(self) -> bytes:
        try:
            return read_body(self.rfile, self.headers, MAX_BODY_BYTES, MAX_CHUNKS, MAX_LINE, MAX_TRAILER_LINES)
        except BodyError as exc:
            if exc.status == 413:
                self.send_error(413)
            elif exc.status is not None:
                self.send_error(exc.status, str(exc))
            raise _DropConnection() from None

    def _serve(self) -> None:
        upstream = self.server.upstream
        raw = self._read_body()
        t = time.monotonic()

        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers: Dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value

        decode_error: Optional[str] = None
        try:
            body = decode_body(raw, headers.get("content-encoding", ""))
        except ValueError as exc:
            body = raw
            decode_error = str(exc)

        envelope: Optional[Envelope] = None
        envelope_error: Optional[str] = None
        if _is_envelope_path(path):
            if decode_error is not None:
                envelope_error = f"body not decoded: {decode_error}"
            else:
                try:
                    envelope = parse_envelope(body)
                except ValueError as exc:
                    envelope_error = str(exc)

        auth = parse_sentry_auth(headers.get("x-sentry-auth", ""))
        for key, value in query.items():
            if key.startswith("sentry_"):
                auth.setdefault(key, value)

        reply = upstream._next_reply()
        event_id = envelope.event_id if envelope is not None else None
        status = 0 if reply.action in ("drop", "reset") else int(reply.status)
        record = Recorded(
            t=t,
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            raw_body=raw,
            body=body,
            envelope=envelope,
            status=status,
            auth=auth,
            decode_error=decode_error,
            envelope_error=envelope_error,
            target=self.path,
            action=reply.action,
        )
        upstream._record(record)

        delay = max(0.0, float(upstream.delay_s)) + reply.delay_s
        if delay > 0 and upstream._stopping.wait(delay):
            raise _DropConnection()  # stopping: do not answer

        if reply.action == "drop":
            self.close_connection = True
            return
        if reply.action == "reset":
            self._reset()
            raise _DropConnection()
        self._respond(reply, event_id)

    def _black_hole(self) -> None:
        """A request on a forgotten connection: swallow it, never answer, until the client gives up."""
        self.close_connection = True
        self.server.upstream._note_black_holed()
        self.connection.settimeout(0.5)
        for _ in range(int(BLACK_HOLE_MAX_S / 0.5)):
            if self.server.upstream._stopping.is_set():
                return
            try:
                if not self.connection.recv(65536):
                    return  # the client closed it
            except socket.timeout:
                continue
            except OSError:
                return

    def _reset(self) -> None:
        """Close the socket with SO_LINGER 0 so the peer gets an RST."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # makefile() objects hold references that defer the real close: close them first.
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        sock.close()

    def _respond(self, reply: Reply, event_id: Optional[str]) -> None:
        status = int(reply.status)
        body = reply.body
        if body is None:
            if 200 <= status < 300:
                body = json.dumps({"id": event_id or uuid.uuid4().hex}).encode()
            else:
                body = json.dumps({"detail": f"fake upstream status {status}"}).encode()
        no_body = status in (204, 304) or 100 <= status < 200
        if no_body:
            body = b""
        if reply.action == "drop_mid_response" and len(body) < 2:
            body = json.dumps({"detail": "fake upstream truncated response"}).encode()

        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('Unknown',))[0]}"]
        lower = {k.lower() for k in reply.headers}
        if "content-type" not in lower and not no_body:
            lines.append("Content-Type: application/json")
        for name, value in reply.headers.items():
            if name.lower() in ("content-length", "transfer-encoding"):
                continue
            lines.append(f"{name}: {value}")
            if name.lower() == "connection" and value.strip().lower() == "close":
                self.close_connection = True
        if not no_body:
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection and "connection" not in lower:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        if self.command == "HEAD":
            body = b""
        if reply.action == "drop_mid_response":
            self.close_connection = True
            self.wfile.write(head + body[: len(body) // 2])
            self.wfile.flush()
            return
        self.wfile.write(head + body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], upstream: "FakeUpstream") -> None:
        self.upstream = upstream
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("fake upstream: unhandled error for %s", client_address, exc_info=True)


# --------------------------------------------------------------------------------------------
# Public façade
# --------------------------------------------------------------------------------------------


class FakeUpstream:
    """A recording, fault-injecting fake of Sentry's ingest endpoint on 127.0.0.1."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        idle_close_s: Optional[float] = None,
        tls: Optional[ssl.SSLContext] = None,
        handshake_rtts: float = 0.0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the fake upstream only listens on loopback (127.0.0.1)")
        self.host = "127.0.0.1"
        self._requested_port = int(port)
        self.delay_s = float(delay_s)
        self.idle_close_s = idle_close_s
        #: Server-side TLS context: serve HTTPS (``base_url`` and ``dsn`` say ``https``).
        self.tls = tls
        #: A new TLS connection waits this many ``delay_s`` round trips before its handshake
        #: completes (TCP's and TLS's own, which the loopback would otherwise make free).
        self.handshake_rtts = float(handshake_rtts)
        self._handshakes = 0
        self._resumed = 0
        self.default = Reply()
        #: Optional callback run (in the handler thread) for every recorded request.
        self.on_record: Optional[Callable[[Recorded], None]] = None
        self._cond = threading.Condition(threading.RLock())
        self._requests: List[Recorded] = []
        self._script: Deque[Reply] = deque()
        self._generation = 0
        self._connections_opened = 0
        self._idle_closes = 0
        self._black_holed = 0
        self._forgotten: Set[socket.socket] = set()
        self._open: Set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "FakeUpstream":
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("fake upstream listening on %s", self.base_url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._cond:
            conns = list(self._open)
        for conn in conns:  # unblock handler threads waiting on keep-alive reads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def dsn(
        self, public_key: str = "0123456789abcdef0123456789abcdef", project_id: str = "42"
    ) -> str:
        return f"{self.scheme}://{public_key}@127.0.0.1:{self.port}/{project_id}"

    # -- scripting -------------------------------------------------------------------------

    def script(self, replies: Sequence[Reply]) -> None:
        """Replace the pending script: one reply per request, in order, then ``default``."""
        replies = list(replies)
        for r in replies:
            if not isinstance(r, Reply):
                raise TypeError(f"expected Reply, got {type(r).__name__}")
        with self._cond:
            self._script = deque(replies)

    @property
    def pending_script(self) -> int:
        with self._cond:
            return len(self._script)

    def _close_unread_next(self) -> bool:
        """True (and the reply taken) if the next reply is ``close_unread``."""
        with self._cond:
            if self._script:
                if self._script[0].action != "close_unread":
                    return False
                self._script.popleft()
                return True
            return self.default.action == "close_unread"

    def _next_reply(self) -> Reply:
        with self._cond:
            if self._script:
                return self._script.popleft()
            return self.default

    # -- recording -------------------------------------------------------------------------

    def _record(self, record: Recorded) -> None:
        with self._cond:
            self._requests.append(record)
            self._generation += 1
            self._cond.notify_all()
        callback = self.on_record
        if callback is not None:
            try:
                callback(record)
            except Exception:
                logger.exception("fake upstream: on_record callback failed")

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections_opened += 1
            self._open.add(conn)
            self._generation += 1
            self._cond.notify_all()

    def forget_connections(self) -> int:
        """Forget every connection open now, as the network forgets a SnapStart snapshot's: the
        next request on one of them is swallowed and never answered (not recorded either), like
        packets into a black hole, until the client closes it. Returns how many were forgotten."""
        with self._cond:
            self._forgotten |= self._open
            return len(self._forgotten)

    def _is_forgotten(self, conn: socket.socket) -> bool:
        with self._cond:
            return conn in self._forgotten

    def _note_black_holed(self) -> None:
        with self._cond:
            self._black_holed += 1
            self._generation += 1
            self._cond.notify_all()

    @property
    def black_holed(self) -> int:
        """Requests swallowed on forgotten connections."""
        with self._cond:
            return self._black_holed

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._cond:
            self._forgotten.discard(conn)
            self._open.discard(conn)
            self._generation += 1
            self._cond.notify_all()

    def _note_handshake(self, resumed: bool = False) -> None:
        with self._cond:
            self._handshakes += 1
            self._resumed += int(bool(resumed))

    def _note_idle_close(self) -> None:
        with self._cond:
            self._idle_closes += 1
            self._generation += 1
            self._cond.notify_all()

    @property
    def requests(self) -> List[Recorded]:
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        """Forget recorded requests (the script, default and counters are kept)."""
        with self._cond:
            self._requests.clear()
            self._generation += 1
            self._cond.notify_all()

    @property
    def connections_opened(self) -> int:
        with self._cond:
            return self._connections_opened

    @property
    def handshakes(self) -> int:
        """TLS handshakes completed (one per connection opened over TLS)."""
        with self._cond:
            return self._handshakes

    @property
    def resumed(self) -> int:
        """Of those handshakes, how many resumed an earlier TLS session (abbreviated: no certificate)."""
        with self._cond:
            return self._resumed

    @property
    def idle_closes(self) -> int:
        with self._cond:
            return self._idle_closes

    def wait_for(self, predicate: Callable[[List[Recorded]], bool], timeout: float) -> bool:
        """Wait until ``predicate(snapshot_of_requests)`` is true; False at the deadline.

        The predicate runs outside the lock, on a snapshot; it is re-evaluated whenever a
        request is recorded or a connection opens/closes, and at least every 50 ms (so a
        predicate may also look at the counters).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        max_rounds = int(max(0.0, timeout) / 0.05) + 10_000_000  # time is the real bound
        for _ in range(max_rounds):
            with self._cond:
                generation = self._generation
                snapshot = list(self._requests)
            if predicate(snapshot):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if self._generation == generation:
                    self._cond.wait(min(remaining, 0.05))
        return bool(predicate(self.requests))

    def items(self, item_type: Optional[str] = None) -> List[Tuple[Recorded, Dict[str, Any], bytes]]:
        """All envelope items across recorded requests, optionally only one type."""
        out: List[Tuple[Recorded, Dict[str, Any], bytes]] = []
        for record in self.requests:
            if record.envelope is None:
                continue
            for header, payload in record.envelope.items:
                if item_type is None or header.get("type") == item_type:
                    out.append((record, header, payload))
        return out

    def logs(self) -> List[Dict[str, Any]]:
        """Every log of every ``log`` item received; raises ``ValueError`` naming the problems of
        any item that breaks the Sentry Logs protocol (see ``log_item_problems``)."""
        out: List[Dict[str, Any]] = []
        for _record, header, payload in self.items("log"):
            problems = log_item_problems(header, payload)
            if problems:
                raise ValueError("invalid log item: " + "; ".join(problems[:10]))
            out.extend(json.loads(payload.decode("utf-8"))["items"])
        return out

    def event_ids(self, item_type: str = "event") -> List[str]:
        """``event_id`` of every item of that type (from its JSON payload, else the envelope)."""
        ids: List[str] = []
        for record, _header, payload in self.items(item_type):
            event_id: Optional[str] = None
            try:
                data = json.loads(payload.decode("utf-8"))
                if isinstance(data, dict) and isinstance(data.get("event_id"), str):
                    event_id = data["event_id"]
            except (UnicodeDecodeError, ValueError):
                pass
            if event_id is None and record.envelope is not None:
                event_id = record.envelope.event_id
            if event_id is not None:
                ids.append(event_id)
        return ids


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _log_record(record: Recorded) -> None:
    types = ",".join(record.item_types) or "-"
    extra = f" decode_error={record.decode_error!r}" if record.decode_error else ""
    if record.envelope_error:
        extra += f" envelope_error={record.envelope_error!r}"
    logger.info(
        "%s %s -> %s items=%s bytes=%d%s",
        record.method,
        record.target or record.path,
        record.status or record.action,
        types,
        len(record.raw_body),
        extra,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.fake_upstream",
        description="Fake Sentry ingest server on 127.0.0.1 that logs every request.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before every reply")
    parser.add_argument(
        "--idle-close-s", type=float, default=None, help="close idle keep-alive connections"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    stop = threading.Event()
    up = FakeUpstream(
        port=args.port, delay_s=max(0.0, args.delay_ms) / 1000.0, idle_close_s=args.idle_close_s
    )
    up.on_record = _log_record
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with up:
            logger.info("fake upstream listening on %s (dsn %s)", up.base_url, up.dsn())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    logger.info("fake upstream stopped after %d requests", len(up.requests))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
