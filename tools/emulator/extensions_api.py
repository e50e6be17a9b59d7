"""The Extensions API (``/2020-01-01/extension``): ``register`` during Init, the ``event/next``
long poll that hands out INVOKE and SHUTDOWN events, and ``init/error``/``exit/error``."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Optional, Tuple

from tools.emulator.base import EmulatorBase
from tools.emulator.server import Reply, json_reply
from tools.emulator.state import ACCOUNT_ID, FUNCTION_VERSION, Ext, Sandbox

logger = logging.getLogger(__name__)

EXTENSION_PREFIX = "/2020-01-01/extension"
EXTENSION_EVENTS = frozenset({"INVOKE", "SHUTDOWN"})


class ExtensionsApi(EmulatorBase):
    """Handlers of the Extensions API."""

    def _route_extensions(self, method: str, path: str, headers: Any, body: bytes) -> Optional[Reply]:
        """The reply to an Extensions API request; None if ``path`` is not one of its endpoints."""
        if not path.startswith(EXTENSION_PREFIX + "/"):
            return None
        sub = path[len(EXTENSION_PREFIX):]
        if sub == "/register" and method == "POST":
            return self._api_register(headers, body)
        if sub == "/event/next" and method == "GET":
            return self._api_extension_next(headers.get("Lambda-Extension-Identifier"))
        if sub in ("/init/error", "/exit/error") and method == "POST":
            return self._api_extension_error(sub[1:], headers, body)
        if sub in ("/register", "/event/next", "/init/error", "/exit/error"):
            return json_reply(405, "MethodNotAllowed", path)
        return None

    def _api_register(self, headers: Any, body: bytes) -> Reply:
        name = headers.get("Lambda-Extension-Name")
        if not name:
            return json_reply(400, "InvalidRequest", "missing Lambda-Extension-Name header")
        try:
            req = json.loads(body.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError):
            return json_reply(400, "InvalidRequest", "register body is not valid JSON")
        events = req.get("events") if isinstance(req, dict) else None
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            return json_reply(400, "InvalidRequest", 'register body must be {"events": [...]}')
        bad = [e for e in events if e not in EXTENSION_EVENTS]
        if bad:
            return json_reply(400, "InvalidEventType", "unknown event types %r" % (bad,))
        if self.managed and "INVOKE" in events:  # as Lambda Managed Instances answer
            return json_reply(403, "Extension.InvalidEventType", "INVOKE is not supported on Lambda Managed Instances")
        with self._cond:
            sb = self._sandbox
            self._record_call(name, "register")
            if sb is None or sb.phase != "init":
                return json_reply(403, "Extension.InvalidRegistration", "registration is only possible during Init")
            if any(e.name == name for e in sb.extensions.values()):
                return json_reply(409, "Extension.AlreadyRegistered", "extension %s already registered" % name)
            if name not in {p.name for p in sb.procs}:
                logger.warning(
                    "extension registered as %r, which is not the basename of any launched executable (%s); "
                    "Lambda would treat it as an internal extension",
                    name,
                    ", ".join(p.name for p in sb.procs) or "none",
                )
            ext = Ext(ext_id=str(uuid.uuid4()), name=name, events=tuple(events), registered_t=time.monotonic())
            sb.extensions[ext.ext_id] = ext
            self._registrations.append({"name": name, "id": ext.ext_id, "events": list(events), "gen": sb.gen})
            self._cond.notify_all()
        reply = {"functionName": self.function_name, "functionVersion": FUNCTION_VERSION, "handler": self.handler}
        if "accountId" in (headers.get("Lambda-Extension-Accept-Feature") or ""):
            reply["accountId"] = ACCOUNT_ID
        return Reply(
            200,
            {"Content-Type": "application/json", "Lambda-Extension-Identifier": ext.ext_id},
            json.dumps(reply).encode(),
        )

    def _lookup_ext(self, ext_id: Optional[str]) -> Tuple[Optional[Sandbox], Optional[Ext]]:
        sb = self._sandbox
        if sb is None or not ext_id:
            return sb, None
        return sb, sb.extensions.get(ext_id)

    def _api_extension_next(self, ext_id: Optional[str]) -> Reply:
        with self._cond:
            sb, ext = self._lookup_ext(ext_id)
            if sb is None or ext is None:
                self._record_call("?", "next")
                return json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
            self._record_call(ext.name, "next")
            if ext.errored:
                return json_reply(403, "Extension.InvalidStateTransition", "extension already reported an error")
            if not ext.queue:
                ext.done = True
                ext.next_t = time.monotonic()
                self._cond.notify_all()
            event = self._long_poll(sb, ext.queue)
            if event is None:
                return json_reply(500, "Extension.SandboxGone", "sandbox is shutting down")
            ext.done = False
            return Reply(
                200,
                {"Content-Type": "application/json", "Lambda-Extension-Event-Identifier": str(uuid.uuid4())},
                event,
            )

    def _api_extension_error(self, kind: str, headers: Any, body: bytes) -> Reply:
        with self._cond:
            sb, ext = self._lookup_ext(headers.get("Lambda-Extension-Identifier"))
            self._record_call(ext.name if ext else "?", kind)
            if sb is None or ext is None:
                return json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
            try:
                parsed: Any = json.loads(body.decode("utf-8")) if body else None
            except (ValueError, UnicodeDecodeError):
                parsed = body.decode("utf-8", "replace")
            error_type = headers.get("Lambda-Extension-Function-Error-Type")
            self._extension_errors.append(
                {
                    "t": time.monotonic(),
                    "name": ext.name,
                    "id": ext.ext_id,
                    "kind": kind,
                    "error_type": error_type,
                    "body": parsed,
                    "phase": sb.phase,
                }
            )
            logger.info("extension %s posted %s: %s %r", ext.name, kind, error_type, parsed)
            ext.errored = "%s (%s)" % (kind, error_type)
            self._cond.notify_all()
            return Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

