"""Client for the Lambda Extensions and Telemetry APIs over raw sockets.

Raw sockets keep ``http.client`` (and the ``email``/``ssl`` imports it drags in) off the
start-up path, so registration happens a few ms after the process starts. One connection is
kept across calls (HTTP/1.1 keep-alive): a new loopback connection per ``/event/next`` cost ~90 µs
more of CPU per invocation. Every call comes from the main thread, so the kept socket is not shared.
"""

from __future__ import annotations

import socket
import time

from ..util.http_numbers import parse_number

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing or json before the first /event/next (start-up budget: main.py)
    from typing import Any, Callable, Dict, Optional, Tuple

EXTENSION_PREFIX = "/2020-01-01/extension"
TELEMETRY_PATH = "/2022-07-01/telemetry"
TELEMETRY_SCHEMA = "2022-12-13"
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # an INVOKE event is small; this bounds a broken peer


class LambdaApiError(Exception):
    """A non-2xx answer (``status``) or a failure talking to the Lambda API (``status`` 0: refused,
    reset, timed out or a malformed reply)."""

    def __init__(self, message: str, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    @property
    def fatal(self) -> bool:
        """True for an answer that asking again will not change: a 4xx (bad request, unknown
        extension identifier) or a 500, which the API documents as non-recoverable. Transport
        failures and other 5xx are transient."""
        return 400 <= self.status <= 500


RESET_REASONS = ("timeout", "failure")  # SHUTDOWN reasons after which Lambda resets the environment

def _number(text: str, what: str, base: int = 10) -> int:
    """A non-negative integer in ASCII digits (``int`` alone accepts signs, "_" and other scripts' digits)."""
    number = parse_number(text, 18, base)
    if number is None:
        raise LambdaApiError("malformed %s %r" % (what, text.strip()[:40]))
    return number


def _split_addr(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        number = _number(port, "port")
    except LambdaApiError:
        number = 0
    if not host or not 0 < number < 65536:
        raise LambdaApiError("AWS_LAMBDA_RUNTIME_API must be host:port, got %r" % addr)
    return host.strip("[]"), number


class _Stale(Exception):
    """A kept connection the server had closed: nothing of a reply came, so the request is resent."""


def _read_response(sock: socket.socket, reused: bool = False) -> Tuple[int, Dict[str, str], bytes, bool]:
    """The reply (status, headers, body) and whether the connection may carry the next request.
    On a ``reused`` connection, an end or reset before any byte of the reply raises ``_Stale``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if reused and not buf:
                raise _Stale() from None
            raise
        if not chunk:
            if reused and not buf:
                raise _Stale()
            raise LambdaApiError("connection closed before the response headers")
        buf += chunk
        if len(buf) > 65536 and b"\r\n\r\n" not in buf:
            raise LambdaApiError("response headers too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or len(parts[1]) != 3:
        raise LambdaApiError("malformed status line %r" % lines[0][:80])
    status = _number(parts[1], "status code")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    # Kept only for an HTTP/1.1 reply whose body ended exactly where its Content-Length said.
    keep = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(sock, rest)
        keep = False  # the last chunk's trailer is left unread
    elif "content-length" in headers:
        length = _number(headers["content-length"], "Content-Length")
        if length > MAX_RESPONSE_BYTES:
            raise LambdaApiError("response body too large (%d bytes)" % length)
        body = rest
        while len(body) < length:
            chunk = sock.recv(min(65536, length - len(body)))
            if not chunk:
                raise LambdaApiError("connection closed mid-body")
            body += chunk
        keep = keep and len(body) == length
    elif status in (204, 304) and keep:  # no body; the server keeps the connection open
        body = rest
        keep = not rest
    else:
        keep = False
        body = rest
        while len(body) <= MAX_RESPONSE_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body, keep


def _read_chunked(sock: socket.socket, buf: bytes) -> bytes:
    body = b""
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise LambdaApiError("connection closed mid-chunk")
            buf += chunk
        size_line, _, buf = buf.partition(b"\r\n")
        size = _number(size_line.split(b";", 1)[0].decode("latin-1"), "chunk size", 16)
        if size == 0:
            return body
        if len(body) + size > MAX_RESPONSE_BYTES:
            raise LambdaApiError("chunked response too large")
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise LambdaApiError("connection closed mid-chunk")
            buf += chunk
        body += buf[:size]
        buf = buf[size + 2:]


class LambdaApi:
    """The Extensions API (register, next, errors) and the Telemetry API subscription."""

    def __init__(self, runtime_api: str) -> None:
        self.host, self.port = _split_addr(runtime_api)
        # getaddrinfo() runs a str host through the idna codec, whose import (with re) is on the
        # start-up budget (main.py); an ASCII host needs no encoding, so it goes as bytes.
        self._connect_host = self.host.encode("ascii") if self.host.isascii() else self.host
        self.extension_id: Optional[str] = None
        self.register_body = b""
        self._sock: Optional[socket.socket] = None  # kept open between requests (HTTP/1.1 keep-alive)

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, timeout: Optional[float] = 5.0,
                on_sent: Optional[Callable[[], None]] = None) -> Tuple[int, Dict[str, str], bytes]:
        """One HTTP request, on the connection kept from the last one (HTTP/1.1 keep-alive) if it is
        still open; ``timeout=None`` waits forever (long poll). A kept connection the server closed
        before any byte of the reply is replaced by a fresh one, once; any other failure raises."""
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (self.host, self.port)]
        if self.extension_id:
            lines.append("Lambda-Extension-Identifier: %s" % self.extension_id)
        for name, value in (headers or {}).items():
            lines.append("%s: %s" % (name, value))
        payload = body or b""
        if body is not None or method in ("POST", "PUT"):
            lines.append("Content-Type: application/json")
            lines.append("Content-Length: %d" % len(payload))
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                try:
                    return self._exchange(sock, data, timeout, on_sent, True)
                except _Stale:
                    on_sent = None  # ran once already
            sock = socket.create_connection((self._connect_host, self.port), timeout=5.0)
            return self._exchange(sock, data, timeout, on_sent, False)
        except OSError as exc:
            raise LambdaApiError("%s %s failed: %s" % (method, path, exc)) from None

    def _exchange(self, sock: socket.socket, data: bytes, timeout: Optional[float],
                  on_sent: Optional[Callable[[], None]], reused: bool) -> Tuple[int, Dict[str, str], bytes]:
        """Send ``data`` and read the reply on ``sock``, which is kept for the next request if the
        reply allows it and closed otherwise (also on any exception, a StopSignal's included)."""
        try:
            if sock.gettimeout() != timeout:
                sock.settimeout(timeout)
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                if reused:
                    raise _Stale() from None
                raise
            if on_sent is not None:
                on_sent()
            status, headers, body, keep = _read_response(sock, reused)
        except BaseException:
            sock.close()
            raise
        if keep:
            self._sock = sock
        else:
            sock.close()
        return status, headers, body

    def _json(self, method: str, path: str, payload: Optional[Dict[str, Any]] = None,
              headers: Optional[Dict[str, str]] = None, timeout: Optional[float] = 5.0,
              on_sent: Optional[Callable[[], None]] = None) -> Tuple[int, Dict[str, str], Any]:
        body = None if payload is None else _dumps(payload).encode("utf-8")
        status, resp_headers, raw = self.request(method, path, body, headers, timeout, on_sent)
        if not 200 <= status < 300:
            raise LambdaApiError("%s %s answered %d: %s" % (method, path, status,
                                                           raw[:200].decode("utf-8", "replace")),
                                 status, raw)
        return status, resp_headers, _loads(raw)

    def register(self, name: str, events: Tuple[str, ...] = ("INVOKE", "SHUTDOWN"),
                 parse: bool = True) -> Dict[str, Any]:
        """Register the extension; stores its identifier and returns the function info.

        ``parse=False`` keeps ``json`` off the start-up path: the info is then ``{}`` and the raw
        body stays in ``register_body`` for later.
        """
        self.extension_id = None
        status, headers, raw = self.request("POST", EXTENSION_PREFIX + "/register",
                                            _dumps({"events": list(events)}).encode("utf-8"),
                                            {"Lambda-Extension-Name": name})
        if not 200 <= status < 300:
            raise LambdaApiError("POST %s/register answered %d: %s" % (
                EXTENSION_PREFIX, status, raw[:200].decode("utf-8", "replace")), status, raw)
        ext_id = headers.get("lambda-extension-identifier")
        if not ext_id:
            raise LambdaApiError("register answered without Lambda-Extension-Identifier")
        self.extension_id = ext_id
        self.register_body = raw
        info = _loads(raw) if parse else {}
        return info if isinstance(info, dict) else {}

    def function_info(self) -> Dict[str, Any]:
        """The function info the last ``register`` answered (parsed now if it was not then)."""
        info = _loads(self.register_body)
        return info if isinstance(info, dict) else {}

    def next_event(self, on_sent: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
        """Block (no timeout: it is a long poll) until the next lifecycle event.

        ``on_sent`` runs once the request is on the wire, before the wait begins.
        """
        _, _, event = self._json("GET", EXTENSION_PREFIX + "/event/next", timeout=None, on_sent=on_sent)
        if not isinstance(event, dict) or "eventType" not in event:
            raise LambdaApiError("event/next answered something that is not an event")
        return event

    def report_error(self, phase: str, error_type: str, message: str) -> None:
        """POST ``/init/error`` or ``/exit/error`` (phase is ``init`` or ``exit``)."""
        self._json("POST", "%s/%s/error" % (EXTENSION_PREFIX, phase),
                   {"errorMessage": message, "errorType": error_type, "stackTrace": []},
                   {"Lambda-Extension-Function-Error-Type": error_type})

    def subscribe_telemetry(self, host: str, port: int, path: str = "/telemetry", schema: str = TELEMETRY_SCHEMA,
                            types: Tuple[str, ...] = ("platform",)) -> Tuple[int, Any]:
        """Subscribe ``http://host:port<path>`` to ``types`` (platform, and function with function
        logs on); returns (status, parsed body). Never ``extension``: logging from the listener loops.
        """
        status, _, parsed = self._json("PUT", TELEMETRY_PATH, telemetry_subscription(host, port, path, schema, types))
        return status, parsed


def telemetry_subscription(host: str, port: int, path: str = "/telemetry", schema: str = TELEMETRY_SCHEMA,
                           types: Tuple[str, ...] = ("platform",)) -> Dict[str, Any]:
    """The Telemetry API subscription body (25 ms batching, as Datadog and OpenTelemetry use; with
    function logs a batch holds at most 1000 records or 256 KiB, the smallest sizes Lambda allows)."""
    return {
        "schemaVersion": schema,
        "types": [t for t in types if t != "extension"],
        "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
        "destination": {"protocol": "HTTP", "URI": "http://%s:%d%s" % (host, port, path)},
    }


# A JSON text starts with one of these (after whitespace); any other body is not JSON.
_JSON_START = frozenset(b'{["-0123456789tfnNI\x00\xef\xfe\xff')  # NaN, Infinity, UTF-16/32 and BOMs too
# Strings made of these encode as themselves between quotes, exactly as json.dumps writes them.
_JSON_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - frozenset('"\\')


def _loads(raw: bytes) -> Any:
    """The parsed JSON body, ``{}`` for an empty one, or the decoded text if it is not JSON.

    A body that cannot be JSON (``OK``) is decoded without importing ``json``.
    """
    text = raw.strip()
    if not text:
        return {}
    if text[0] in _JSON_START:
        import json

        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            pass
    return raw.decode("utf-8", "replace")


def _dumps(value: Any) -> str:
    """``json.dumps(value)``, written without importing ``json`` for the plain values sent at start-up."""
    plain = _dumps_plain(value)
    if plain is not None:
        return plain
    import json

    return json.dumps(value)


def _dumps_plain(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return '"%s"' % value if _JSON_PLAIN.issuperset(value) else None
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if type(value) is int:
        return str(value)
    parts = []
    if isinstance(value, dict):
        for key, item in value.items():
            k, v = _dumps_plain(key) if isinstance(key, str) else None, _dumps_plain(item)
            if k is None or v is None:
                return None
            parts.append("%s: %s" % (k, v))
        return "{%s}" % ", ".join(parts)
    if isinstance(value, (list, tuple)):
        for item in value:
            v = _dumps_plain(item)
            if v is None:
                return None
            parts.append(v)
        return "[%s]" % ", ".join(parts)
    return None


def event_deadline(event: Dict[str, Any], margin_ms: int) -> float:
    """The event's ``deadlineMs`` (epoch ms) as a monotonic time, less the safety margin."""
    try:
        deadline_ms = float(event["deadlineMs"])
    except (KeyError, TypeError, ValueError):
        deadline_ms = time.time() * 1000 + 2000
    return time.monotonic() + (deadline_ms - margin_ms) / 1000.0 - time.time()


def is_reset(reason: Optional[str]) -> bool:
    """Whether a SHUTDOWN ``reason`` means Lambda resets this execution environment (/tmp survives).
    Lambda sends ``timeout``/``failure``; AWS's emulator (RIE) capitalises them (``Timeout``), and
    its ``SandboxTerminated`` is no reset."""
    return isinstance(reason, str) and reason.lower() in RESET_REASONS
