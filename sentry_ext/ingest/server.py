"""The local HTTP server the SDKs post to: validates, authenticates and queues requests."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import __version__
from ..util.http_server import RESPONSE_REASONS, BoundedHandler, BoundedServer
from ..delivery.queue import BoundedQueue
from ..delivery.request import Request
from ..config import Config
from ..protocol.dsn import Dsn, DsnError, parse_auth_header, query_auth
from ..protocol.envelope import EnvelopeError, parse_header
from ..protocol.body import header_and_body
from ..util.http_numbers import content_length
from ..util.stats import Stats

log = logging.getLogger(__name__)

API_PATH = re.compile(r"^/api/(?P<project>\d+)/(?P<endpoint>[A-Za-z0-9_\-./]+)$")
FORWARDED_HEADERS = ("content-type", "content-encoding", "x-sentry-auth", "user-agent")
QUEUE_FULL_BACKOFF_S = 1
# Sentry's SDKs honour X-Sentry-Rate-Limits on a 429 exactly; a bare 429 would mean 60 s of
# silence for every category. One second for everything is the briefest back-off we can ask for.
QUEUE_FULL_HEADERS = {"Retry-After": str(QUEUE_FULL_BACKOFF_S),
                      "X-Sentry-Rate-Limits": "%d::organization:extension_queue_full" % QUEUE_FULL_BACKOFF_S}

# Returns (status, body, extra headers) for an accepted request, or None to use the default flow.
# Called with the request, its envelope header and its body decoded (when small and compressed).
IngestHook = Callable[[Request, Optional[Dict[str, Any]], Optional[bytes]],
                      Optional[Tuple[int, Dict[str, Any], Dict[str, str]]]]


class BadRequest(Exception):
    """An input error answered with ``status`` and a JSON ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str, close: bool = False,
                 headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.close = close
        self.headers = headers or {}


class IngestServer(BoundedServer):
    """The ingest on a socket bound earlier (so the port is held from the first ms); bodies in
    reading share the queue's byte cap."""

    def __init__(self, sock: socket.socket, cfg: Config, queue: BoundedQueue, stats: Stats,
                 health_extra: Optional[Callable[[], Dict[str, Any]]] = None) -> None:
        super().__init__(sock, IngestHandler, cfg.max_connections, cfg.queue_max_bytes, stats)
        self.cfg = cfg
        self.dsn: Dsn = cfg.dsn  # type: ignore[assignment]
        self.queue = queue
        self.health_extra = health_extra
        self.before_queue: Optional[IngestHook] = None
        # Extra headers for an accepted request's 200 (e.g. active rate limits mirrored to the SDK).
        self.accepted_headers: Optional[Callable[[Request], Dict[str, str]]] = None
        # Told about each request the ingest side gives up (reason "queue_overflow"), for client reports.
        self.on_drop: Optional[Callable[[Request, str], None]] = None
        self._auth: Tuple[str, Optional[str]] = ("", None)  # the last X-Sentry-Auth value and its key

    def start(self, name: str = "sentry-ext-ingest") -> None:
        super().start(name)

    def auth_key(self, value: str) -> Optional[str]:
        """The ``sentry_key`` of an X-Sentry-Auth value (an SDK sends the same one every time:
        the last one is remembered); BadRequest 403 if it is malformed."""
        seen, key = self._auth
        if value != seen:
            try:
                key = parse_auth_header(value).get("sentry_key")
            except DsnError as exc:
                raise BadRequest(403, "bad X-Sentry-Auth: %s" % exc) from None
            self._auth = (value, key)
        return key


class IngestHandler(BoundedHandler):
    """Routes: POST /api/<project>/<endpoint>/, POST /envelope, GET /health."""

    server: IngestServer
    server_version = "sentry-lambda-extension/" + __version__

    def setup(self) -> None:
        self.timeout = self.server.cfg.client_timeout_s
        super().setup()

    # -- responses -----------------------------------------------------------------------------

    def _reply(self, status: int, payload: Any, headers: Optional[Dict[str, str]] = None,
               close: bool = False) -> None:
        """One write: the head and ``payload`` as JSON (bytes: already JSON)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        extra = "".join("%s: %s\r\n" % item for item in headers.items()) if headers else ""
        if close:
            extra += "Connection: close\r\n"
            self.close_connection = True
        head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
            status, RESPONSE_REASONS.get(status, ""), len(body), extra)
        self.connection.sendall(head.encode("latin-1") + body)

    def _fail(self, exc: BadRequest) -> None:
        self.server.stats.reject(exc.status)
        log.debug("rejected %s %s: %d %s", self.command, self.path, exc.status, exc.detail)
        self._reply(exc.status, {"detail": exc.detail}, exc.headers, close=exc.close)

    # -- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/health/"):
            self._reply(200, self._health())
        else:
            self._fail(BadRequest(404, "unknown route; this is the Sentry Lambda extension"))

    def handle_expect_100(self) -> bool:
        # Refuse a malformed or oversized length before the client sends the body, not after.
        try:
            self._declared_length()
        except BadRequest as exc:
            self._fail(exc)
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:
        self._reserved = 0
        try:
            self._post()
        except BadRequest as exc:
            self._fail(exc)
        except (ConnectionError, socket.timeout, BlockingIOError):
            # BlockingIOError: a send ran out of the client's time (SO_SNDTIMEO, BoundedHandler.setup)
            self.close_connection = True
        except Exception:
            log.exception("ingest handler error (survived)")
            self._reply(500, {"detail": "internal error in the extension"}, close=True)
        finally:
            if self._reserved:
                self.server.release(self._reserved)

    def do_PUT(self) -> None:
        self._method_not_allowed()

    def do_DELETE(self) -> None:
        self._method_not_allowed()

    def _method_not_allowed(self) -> None:
        self._fail(BadRequest(405, "method not allowed", close=True))

    def _health(self) -> Dict[str, Any]:
        server = self.server
        data: Dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - server.stats.started, 3),
            "queue": server.queue.depth(),
            "counters": server.stats.snapshot(),
        }
        if server.health_extra is not None:
            data.update(server.health_extra())
        return data

    def _post(self) -> None:
        path, _, query = self.path.partition("?")
        dsn = self.server.dsn
        if path in ("/envelope", "/envelope/"):
            kind, project, endpoint = "tunnel", None, "envelope"
        else:
            match = API_PATH.match(path)
            if match is None:
                if path in ("/api/store", "/api/store/"):
                    project, endpoint = None, "store"
                else:
                    raise BadRequest(404, "unknown route %s" % path[:100], close=True)
            else:
                project, endpoint = match.group("project"), match.group("endpoint").rstrip("/")
            kind = "api"
        length = self._declared_length()
        if length is None:
            body = self._read_chunked(self.server.cfg.max_body_bytes)
        else:
            self._reserve(length)
            body = self.rfile.read(length)
            if len(body) != length:
                raise ConnectionError("client sent %d of %d bytes" % (len(body), length))
        self.server.client_wait(self.connection, False)
        encoding = (self.headers.get("content-encoding") or "").lower()  # values come stripped
        header: Optional[Dict[str, Any]] = None
        decoded = None  # the body decoded for its header, if small: shared with the hook, not queued
        if endpoint == "envelope":
            header, decoded = self._envelope_header(body, encoding, required=kind == "tunnel")
        public_key = self._authenticate(project, query, header)
        if kind == "tunnel":
            upstream_path = "/api/%s/envelope/?sentry_key=%s&sentry_version=7" % (dsn.project_id, public_key)
        else:
            upstream_path = path if not query else "%s?%s" % (path, query)
        headers = {}
        for name in FORWARDED_HEADERS:
            if name in self.headers:
                headers[name] = self.headers[name]
        event_id = header.get("event_id") if header else None
        req = Request(upstream_path=upstream_path, headers=headers, body=body, public_key=public_key,
                      event_id=event_id if isinstance(event_id, str) else None)
        self._enqueue(req, header, decoded)

    def _enqueue(self, req: Request, header: Optional[Dict[str, Any]], decoded: Optional[bytes] = None) -> None:
        server = self.server
        stats = server.stats
        stats.add(received=1, bytes_received=len(req.body))
        hook = server.before_queue
        if hook is not None:
            answer = hook(req, header, decoded)
            if answer is not None:
                status, payload, extra = answer
                self._reply(status, payload, extra)
                return
        if not server.queue.put(req):
            stats.drop("queue_overflow")
            stats.reject(429)
            log.debug("queue full: refused %s", req.upstream_path)
            self._reply(429, {"detail": "extension queue is full; back off briefly"}, QUEUE_FULL_HEADERS)
            if server.on_drop is not None:  # after the reply: counting may parse the body
                server.on_drop(req, "queue_overflow")
            return
        extra = server.accepted_headers(req) if server.accepted_headers is not None else None
        # json.dumps({"id": event_id}), byte for byte
        self._reply(200, b'{"id": %s}' % encode_basestring_ascii(req.event_id).encode() if req.event_id else b"{}",
                    extra)

    # -- input checks --------------------------------------------------------------------------

    def _declared_length(self) -> Optional[int]:
        """The body's Content-Length, or None for a chunked body; BadRequest for anything else
        (both or neither framing, conflicting or malformed lengths, a length over the cap)."""
        cap = self.server.cfg.max_body_bytes
        headers = self.headers
        value = headers.get("content-length")
        if "transfer-encoding" in headers:
            if value is not None:
                raise BadRequest(400, "both Transfer-Encoding and Content-Length", close=True)
            codings = [c.strip().lower() for v in headers.get_all("transfer-encoding") for c in v.split(",")
                       if c.strip()]
            if codings != ["chunked"]:
                raise BadRequest(501, "unsupported Transfer-Encoding %r" % ",".join(codings)[:60], close=True)
            return None
        if value is None:
            raise BadRequest(411, "Content-Length required", close=True)
        if "content-length" in headers.repeated or "," in value:  # a list (RFC 9110 8.6): all the same, or refused
            lengths = {v.strip() for v in ",".join(headers.get_all("content-length")).split(",")}
            if len(lengths) != 1:
                raise BadRequest(400, "conflicting Content-Length headers", close=True)
            value = lengths.pop()
        length = content_length(value)
        if length is None:
            raise BadRequest(400, "invalid Content-Length", close=True)
        if length > cap:
            # Answer without reading the body; the connection cannot be reused after that.
            raise BadRequest(413, "body of %d bytes exceeds the %d-byte cap" % (length, cap), close=True)
        return length

    def _reserve(self, nbytes: int) -> None:
        if not self.server.reserve(nbytes):
            raise BadRequest(429, "extension queue is full; back off briefly", close=True,
                             headers=QUEUE_FULL_HEADERS)
        self._reserved += nbytes

    def _read_chunked(self, cap: int) -> bytes:
        parts: List[bytes] = []
        total = 0
        for _ in range(1_000_000):
            line = self.rfile.readline(1026)
            if not line.endswith(b"\n"):
                raise BadRequest(400, "malformed chunk size line", close=True)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(400, "malformed chunk size", close=True) from None
            if size < 0:
                raise BadRequest(400, "malformed chunk size", close=True)
            if size == 0:
                # Trailer section: skip lines until the empty one.
                for _ in range(100):
                    trailer = self.rfile.readline(8192)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
                raise BadRequest(400, "too many trailer lines", close=True)
            total += size
            if total <= cap:
                self._reserve(size)
            if total > cap:
                raise BadRequest(413, "chunked body exceeds the %d-byte cap" % cap, close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client vanished mid-chunk")
            parts.append(chunk)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadRequest(400, "chunk not followed by CRLF", close=True)
        raise BadRequest(400, "too many chunks", close=True)

    def _envelope_header(self, body: bytes, encoding: str,
                         required: bool) -> Tuple[Optional[Dict[str, Any]], Optional[bytes]]:
        """The envelope header, and the body decoded whole if that was cheap (``header_and_body``)."""
        if encoding in ("br", "zstd") and not required:
            return None, None  # not inspectable with the stdlib; forwarded untouched
        try:
            line, decoded = header_and_body(body, encoding)
            return parse_header(line), decoded
        except EnvelopeError as exc:
            raise BadRequest(400, "malformed envelope: %s" % exc) from None

    def _authenticate(self, project: Optional[str], query: str,
                      header: Optional[Dict[str, Any]]) -> str:
        """Every key and project the request names must agree and match SENTRY_DSN; 403 otherwise."""
        dsn = self.server.dsn
        keys: List[str] = []
        projects: List[str] = [] if project is None else [project]
        auth_value = self.headers.get("x-sentry-auth")
        if auth_value:
            key = self.server.auth_key(auth_value)
            if key:
                keys.append(key)
        key = query_auth(query) if query else None
        if key is not None:
            keys.append(key)
        env_dsn = header.get("dsn") if header else None
        if env_dsn is not None:
            try:
                parsed = Dsn.parse(env_dsn) if isinstance(env_dsn, str) else None
            except DsnError:
                parsed = None
            if parsed is None:
                raise BadRequest(403, "envelope header dsn is not a valid DSN")
            keys.append(parsed.public_key)
            projects.append(parsed.project_id)
        if not keys:
            raise BadRequest(403, "missing authentication (X-Sentry-Auth, sentry_key or envelope dsn)")
        for key in keys:
            if key != dsn.public_key:
                raise BadRequest(403, "unknown public key: this extension only relays for its SENTRY_DSN")
        for project in projects:
            if project != dsn.project_id:
                raise BadRequest(403, "project does not match the extension's SENTRY_DSN")
        return dsn.public_key
