"""The Runtime API (``/2018-06-01/runtime``) that ``awslambdaric`` talks to: ``invocation/next``
hands out the next invocation, ``invocation/<id>/response|error`` ends it, ``init/error``
reports a failed Init."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Dict, Optional

from tools.emulator.base import EmulatorBase
from tools.emulator.server import Reply, json_reply
from tools.emulator.state import Invocation, Sandbox

logger = logging.getLogger(__name__)

RUNTIME_PREFIX = "/2018-06-01/runtime"
INVOCATION_PATH_RE = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")


class RuntimeApi(EmulatorBase):
    """Handlers of the Runtime API."""

    def _route_runtime(self, method: str, path: str, headers: Any, body: bytes) -> Optional[Reply]:
        """The reply to a Runtime API request; None if ``path`` is not one of its endpoints."""
        if path == RUNTIME_PREFIX + "/invocation/next":
            return self._api_runtime_next() if method == "GET" else json_reply(405, "MethodNotAllowed", path)
        match = INVOCATION_PATH_RE.match(path)
        if match:
            if method != "POST":
                return json_reply(405, "MethodNotAllowed", path)
            error_type = headers.get("Lambda-Runtime-Function-Error-Type")
            return self._api_runtime_result(match.group(1), match.group(2) == "error", body, error_type)
        if path == RUNTIME_PREFIX + "/init/error":
            if method != "POST":
                return json_reply(405, "MethodNotAllowed", path)
            return self._api_runtime_init_error(body, headers.get("Lambda-Runtime-Function-Error-Type"))
        return None

    def _api_runtime_next(self) -> Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "next")
            if sb is None or sb.dead:
                return json_reply(500, "Runtime.NoSandbox", "no active sandbox")
            now = time.monotonic()
            rt = sb.rt
            if rt.first_next_t is None:
                rt.first_next_t = now
                self._emit_init_runtime_done(sb, "success")  # type: ignore[attr-defined]
            if not rt.queue:
                rt.done = True
                rt.next_t = now
                self._cond.notify_all()
            inv = self._long_poll(sb, rt.queue)
            if inv is None:
                return json_reply(500, "Runtime.SandboxGone", "sandbox is shutting down")
            rt.done = False
            headers = {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
                "Lambda-Runtime-Trace-Id": inv.trace_id,
            }
            return Reply(200, headers, inv.payload)

    def _invocation_by_id(self, sb: Optional[Sandbox], request_id: str) -> Optional[Invocation]:
        """The invocation in flight with ``request_id`` (lock held); None if there is none."""
        inv = sb.invocation if sb is not None else None
        return inv if inv is not None and inv.request_id == request_id else None

    def _api_runtime_result(self, request_id: str, is_error: bool, body: bytes, error_type: Optional[str]) -> Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "error" if is_error else "response")
            inv = self._invocation_by_id(sb, request_id)
            if inv is None:
                return json_reply(400, "InvalidRequestID", "unknown request id %s" % request_id)
            if inv.t_response is not None or inv.finished:
                return json_reply(400, "InvalidStateTransition", "invocation %s already finished" % request_id)
            t_response = time.monotonic()
            assert sb is not None
            self._sync_function_logs(sb)  # type: ignore[attr-defined]  # the lines it wrote come first
            if inv.t_response is not None or inv.finished or self._invocation_by_id(sb, request_id) is not inv:
                return json_reply(400, "InvalidStateTransition", "invocation %s already finished" % request_id)
            inv.t_response = t_response
            inv.response = body
            inv.status = "error" if is_error else "success"
            if is_error:
                inv.error_type = error_type
                if not error_type:
                    try:
                        inv.error_type = json.loads(body.decode("utf-8")).get("errorType")
                    except (ValueError, UnicodeDecodeError, AttributeError):
                        inv.error_type = "Unhandled"
            assert sb is not None
            self._cond.notify_all()
            if self.managed:  # Managed Instances send no runtimeDone: platform.report ends a request
                return Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')
            record: Dict[str, Any] = {
                "requestId": request_id,
                "status": inv.status,
                "metrics": {
                    "durationMs": round((inv.t_response - inv.t_deliver) * 1000.0, 3),
                    "producedBytes": len(body),
                },
                "tracing": {"type": "X-Amzn-Trace-Id", "value": inv.trace_id},
            }
            if is_error:
                record["errorType"] = inv.error_type or "Unhandled"
            self._emit(sb, "platform.runtimeDone", record)
            return Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

    def _api_runtime_init_error(self, body: bytes, error_type: Optional[str]) -> Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "init/error")
            if sb is None or sb.phase != "init":
                return json_reply(403, "InvalidStateTransition", "init/error outside of Init")
            try:
                parsed: Any = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                parsed = body.decode("utf-8", "replace")
            sb.rt.init_error = {"error_type": error_type, "body": parsed}
            if not sb.rt.init_done_emitted:
                self._emit_init_runtime_done(sb, "error", error_type or "Runtime.Unknown")  # type: ignore[attr-defined]
            self._cond.notify_all()
            return Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

