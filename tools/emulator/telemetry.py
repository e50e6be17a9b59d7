"""The Telemetry API: validating subscriptions (``PUT /2022-07-01/telemetry``), emitting platform
records, and delivering them in batches to each subscriber's HTTP listener by its buffering
settings, never while the sandbox is frozen, with bounded retries."""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time
import urllib.parse
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from tools.emulator.base import EmulatorBase
from tools.emulator.server import Reply, json_reply
from tools.emulator.state import LONG_POLL_MAX_S, MAX_WAIT_ROUNDS, EmulatorError, Sandbox, iso_now

logger = logging.getLogger(__name__)

TELEMETRY_PATH = "/2022-07-01/telemetry"

TELEMETRY_SCHEMA_VERSIONS = frozenset({"2022-07-01", "2022-12-13", "2025-01-29"})
MANAGED_SCHEMA = "2025-01-29"  # the only one Lambda Managed Instances accept
TELEMETRY_TYPES = frozenset({"platform", "function", "extension"})
TELEMETRY_MAX_ITEMS = (1000, 10000)
TELEMETRY_MAX_BYTES = (262144, 1048576)
TELEMETRY_TIMEOUT_MS = (25, 30000)
TELEMETRY_DEFAULT_BUFFERING = {"maxItems": 10000, "maxBytes": 262144, "timeoutMs": 1000}
TELEMETRY_SANDBOX_HOSTS = frozenset({"sandbox.localdomain", "sandbox"})
TELEMETRY_POST_ATTEMPTS = 4
TELEMETRY_POST_TIMEOUT_S = 2.0
TELEMETRY_BACKOFF_S = 0.05
MAX_DELIVERY_ROUNDS = 10_000_000


class Subscriber:
    """One Telemetry API subscription and its delivery state."""

    def __init__(
        self,
        ext_id: str,
        ext_name: str,
        types: Sequence[str],
        buffering: Dict[str, int],
        uri: str,
        host: str,
        port: int,
        path: str,
    ) -> None:
        self.ext_id = ext_id
        self.ext_name = ext_name
        self.types = frozenset(types)
        self.max_items = buffering["maxItems"]
        self.max_bytes = buffering["maxBytes"]
        self.timeout_s = buffering["timeoutMs"] / 1000.0
        self.uri = uri
        self.host = host
        self.port = port
        self.path = path
        self.buffer: Deque[Tuple[float, bytes]] = collections.deque()
        self.buffered_bytes = 0
        self.inflight = False
        self.stopped = False
        self.delivered = 0
        self.dropped = 0
        self.thread: Optional[threading.Thread] = None

    def enqueue(self, item: bytes) -> None:
        self.buffer.append((time.monotonic(), item))
        self.buffered_bytes += len(item)



class TelemetryApi(EmulatorBase):
    """Subscriptions, platform records and their delivery."""

    def _route_telemetry(self, method: str, path: str, headers: Any, body: bytes) -> Optional[Reply]:
        if path != TELEMETRY_PATH:
            return None
        if method != "PUT":
            return json_reply(405, "MethodNotAllowed", path)
        return self._api_telemetry(headers.get("Lambda-Extension-Identifier"), body)

    def _emit(self, sb: Sandbox, rtype: str, record: Dict[str, Any]) -> None:
        """Emit a platform telemetry record (lock held)."""
        item = {"time": iso_now(), "type": rtype, "record": record}
        data = json.dumps(item, separators=(",", ":")).encode()
        sb.telemetry_log.append(data)
        for sub in sb.subscribers:
            if not sub.stopped and "platform" in sub.types:
                sub.enqueue(data)
        self._cond.notify_all()

    def _emit_init_runtime_done(self, sb: Sandbox, status: str, error_type: Optional[str] = None) -> None:
        """``platform.initRuntimeDone``: the runtime called ``next`` or ``init/error`` (lock held)."""
        record: Dict[str, Any] = {"initializationType": self.init_type, "phase": "init", "status": status}
        if error_type:
            record["errorType"] = error_type
        sb.rt.init_done_emitted = True
        self._emit(sb, "platform.initRuntimeDone", record)

    def _paused(self) -> bool:
        return self._frozen or self._freezing

    def _next_batch(self, sub: Subscriber) -> Optional[List[bytes]]:
        """Wait until a batch is due (lock held); None when the subscription ends."""
        for _ in range(MAX_WAIT_ROUNDS):
            if sub.stopped or self._closing:
                return None
            wait_s = 1.0
            if sub.buffer and not self._paused():
                age = time.monotonic() - sub.buffer[0][0]
                if len(sub.buffer) >= sub.max_items or sub.buffered_bytes >= sub.max_bytes or age >= sub.timeout_s:
                    batch: List[bytes] = []
                    size = 2
                    while sub.buffer and len(batch) < sub.max_items:
                        item = sub.buffer[0][1]
                        if batch and size + len(item) + 1 > sub.max_bytes:
                            break
                        sub.buffer.popleft()
                        sub.buffered_bytes -= len(item)
                        batch.append(item)
                        size += len(item) + 1
                    return batch
                wait_s = sub.timeout_s - age
            self._cond.wait(max(0.001, min(wait_s, 1.0)))
        return None

    def _delivery_loop(self, sub: Subscriber) -> None:
        for _ in range(MAX_DELIVERY_ROUNDS):
            with self._cond:
                batch = self._next_batch(sub)
                if batch is None:
                    return
                sub.inflight = True
            ok = False
            try:
                ok = self._post_batch(sub, b"[" + b",".join(batch) + b"]", len(batch))
            finally:
                with self._cond:
                    sub.inflight = False
                    if ok:
                        sub.delivered += len(batch)
                    else:
                        sub.dropped += len(batch)
                    self._cond.notify_all()

    def _post_batch(self, sub: Subscriber, body: bytes, count: int) -> bool:
        for attempt in range(TELEMETRY_POST_ATTEMPTS):
            with self._cond:
                try:
                    self._wait_until(lambda: sub.stopped or not self._paused(), time.monotonic() + LONG_POLL_MAX_S)
                except EmulatorError:
                    return False
                if sub.stopped:
                    return False
            conn = http.client.HTTPConnection(sub.host, sub.port, timeout=TELEMETRY_POST_TIMEOUT_S)
            try:
                conn.request("POST", sub.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if 200 <= resp.status < 300:
                    logger.debug("telemetry: %d records -> %s (%s)", count, sub.ext_name, sub.uri)
                    return True
                logger.warning("telemetry listener %s replied %d (attempt %d)", sub.uri, resp.status, attempt + 1)
            except (OSError, http.client.HTTPException) as exc:
                logger.debug("telemetry POST to %s failed (attempt %d): %s", sub.uri, attempt + 1, exc)
            finally:
                conn.close()
            if self._closed_event.wait(TELEMETRY_BACKOFF_S * (2 ** attempt)):
                return False
        logger.warning("telemetry: dropping %d records for %s after %d attempts", count, sub.uri, TELEMETRY_POST_ATTEMPTS)
        return False

    def _stop_subscribers(self, sb: Sandbox) -> None:
        with self._cond:
            subs = list(sb.subscribers)
            for sub in subs:
                sub.stopped = True
            self._cond.notify_all()
        for sub in subs:
            if sub.thread is not None:
                sub.thread.join(timeout=TELEMETRY_POST_TIMEOUT_S + 1.0)

    @staticmethod
    def _validate_subscription(body: bytes) -> Tuple[Optional[str], Dict[str, Any]]:
        """Return (error message or None, normalised subscription)."""
        try:
            req = json.loads(body.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError):
            return "request body is not valid JSON", {}
        if not isinstance(req, dict):
            return "request body must be a JSON object", {}
        schema = req.get("schemaVersion")
        if schema not in TELEMETRY_SCHEMA_VERSIONS:
            return "unsupported schemaVersion %r" % (schema,), {}
        types = req.get("types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            return "types must be a non-empty list of strings", {}
        bad = [t for t in types if t not in TELEMETRY_TYPES]
        if bad:
            return "invalid types %r (allowed: platform, function, extension)" % (bad,), {}
        buffering_in = req.get("buffering")
        if buffering_in is None:
            buffering_in = {}
        if not isinstance(buffering_in, dict):
            return "buffering must be an object", {}
        buffering = dict(TELEMETRY_DEFAULT_BUFFERING)
        for key, (low, high) in (
            ("maxItems", TELEMETRY_MAX_ITEMS),
            ("maxBytes", TELEMETRY_MAX_BYTES),
            ("timeoutMs", TELEMETRY_TIMEOUT_MS),
        ):
            if key not in buffering_in:
                continue
            value = buffering_in[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                return "buffering.%s must be an integer in [%d, %d], got %r" % (key, low, high, value), {}
            buffering[key] = value
        dest = req.get("destination")
        if not isinstance(dest, dict):
            return "destination must be an object", {}
        if dest.get("protocol") != "HTTP":
            return "destination.protocol must be HTTP", {}
        uri = dest.get("URI")
        if not isinstance(uri, str):
            return "destination.URI must be a string", {}
        parts = urllib.parse.urlsplit(uri)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            return "destination.URI must be http://host:port/path, got %r" % (uri,), {}
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return None, {
            "schema": schema,
            "types": types,
            "buffering": buffering,
            "uri": uri,
            "hostname": parts.hostname,
            "port": port,
            "path": path,
        }

    def _api_telemetry(self, ext_id: Optional[str], body: bytes) -> Reply:
        with self._cond:
            sb, ext = self._lookup_ext(ext_id)
            self._record_call(ext.name if ext else "?", "telemetry/subscribe")
        if not self.telemetry:
            return json_reply(202, "Telemetry.NotSupported", "Telemetry API is not supported")
        if sb is None or ext is None:
            return json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
        error, spec = self._validate_subscription(body)
        if error is None and self.managed and spec["schema"] != MANAGED_SCHEMA:
            error = "unsupported schemaVersion %r (Lambda Managed Instances: %s)" % (spec["schema"], MANAGED_SCHEMA)
        if error is not None:
            logger.warning("telemetry subscription from %s rejected: %s", ext.name, error)
            return json_reply(400, "ValidationError", error)
        hostname = spec["hostname"]
        if hostname == "sandbox":
            logger.warning("telemetry destination host 'sandbox' may resolve elsewhere in a VPC; use sandbox.localdomain")
        elif hostname not in TELEMETRY_SANDBOX_HOSTS and not hostname.startswith("127."):
            # a loopback listener is how local runs avoid binding 0.0.0.0; anything else is suspicious
            logger.warning("telemetry destination host %r is not sandbox.localdomain", hostname)
        host = "127.0.0.1" if hostname in TELEMETRY_SANDBOX_HOSTS else hostname
        sub = Subscriber(ext.ext_id, ext.name, spec["types"], spec["buffering"], spec["uri"], host, spec["port"], spec["path"])
        old: Optional[Subscriber] = None
        with self._cond:
            if sb.phase != "init":
                logger.warning("extension %s subscribed to telemetry outside of Init (phase %s)", ext.name, sb.phase)
            if sb.dead or self._sandbox is not sb:
                return json_reply(403, "Extension.SandboxGone", "sandbox is shutting down")
            old = ext.subscriber
            if old is not None:
                old.stopped = True
                sb.subscribers.remove(old)
            if "platform" in sub.types:
                for item in sb.telemetry_log:  # records of this Init so far
                    sub.enqueue(item)
            ext.subscriber = sub
            sb.subscribers.append(sub)
            sub.thread = threading.Thread(
                target=self._delivery_loop, args=(sub,), name="emu-telemetry-%s" % ext.name, daemon=True
            )
            sub.thread.start()
            self._cond.notify_all()
        logger.debug("telemetry subscription from %s: %s %s", ext.name, sub.uri, spec["buffering"])
        return Reply(200, {"Content-Type": "text/plain"}, b"OK")

