"""SnapStart (``init_type="snap-start"``): Init once, snapshot, restore the same processes later.

As Lambda does: at the end of its Init the runtime calls ``GET /runtime/restore/next`` (awslambdaric
does when AWS_LAMBDA_INITIALIZATION_TYPE is ``snap-start``, after its before-snapshot hooks);
that call ends the runtime's Init and is held. Init ends as usual when every extension has called
``next``, and the sandbox is frozen: that is the snapshot. ``restore()`` (or the first invoke)
emits ``platform.restoreStart``, thaws the very processes frozen at the snapshot, answers the held
``restore/next``, waits (up to the 10 s restore limit) for the runtime's ``invocation/next`` and
emits ``platform.restoreRuntimeDone`` and ``platform.restoreReport``. Extensions get no event at
a restore (the Extensions API has none): the ``next`` they left pending returns the first INVOKE.

The kernel clock cannot be moved: a test makes time pass by staying frozen longer
(``restore(after_s=...)``) and makes the upstream drop or forget connections meanwhile.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Optional

from tools.emulator.base import EmulatorBase
from tools.emulator.server import Reply, json_reply
from tools.emulator.state import FUNCTION_VERSION, LONG_POLL_MAX_S, EmulatorError

logger = logging.getLogger(__name__)

RESTORE_PREFIX = "/2018-06-01/runtime/restore"
RESTORE_TIMEOUT_S = 10.0  # Lambda's limit for the runtime to come back after a restore


class SnapStart(EmulatorBase):
    """The restore endpoints of the Runtime API and the restore phase."""

    def _route_restore(self, method: str, path: str, headers: Any, body: bytes) -> Optional[Reply]:
        if path == RESTORE_PREFIX + "/next":
            return self._api_restore_next() if method == "GET" else json_reply(405, "MethodNotAllowed", path)
        if path == RESTORE_PREFIX + "/error":
            if method != "POST":
                return json_reply(405, "MethodNotAllowed", path)
            return self._api_restore_error(body, headers.get("Lambda-Runtime-Function-Error-Type"))
        return None

    def _api_restore_next(self) -> Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "restore/next")
            if not self.snapstart or sb is None or sb.dead or sb.phase != "init":
                return json_reply(403, "InvalidStateTransition", "restore/next outside of a SnapStart Init")
            rt = sb.rt
            now = time.monotonic()
            if rt.first_next_t is None:
                rt.first_next_t = now
                self._emit_init_runtime_done(sb, "success")  # type: ignore[attr-defined]
            rt.done = True  # the runtime's Init is over: it waits for the restore
            rt.next_t = now
            self._cond.notify_all()
            released = self._wait_until(lambda: self._restored_gen == sb.gen or sb.dead or self._sandbox is not sb,
                                        now + LONG_POLL_MAX_S)
            if not released or self._restored_gen != sb.gen:
                return json_reply(500, "Runtime.SandboxGone", "sandbox is shutting down")
            rt.done = False
            return Reply(200, {"Content-Type": "application/json"}, b"{}")

    def _api_restore_error(self, body: bytes, error_type: Optional[str]) -> Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "restore/error")
            if sb is None or self._restored_gen != sb.gen:
                return json_reply(403, "InvalidStateTransition", "restore/error outside of a restore")
            try:
                parsed: Any = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                parsed = body.decode("utf-8", "replace")
            sb.rt.init_error = {"error_type": error_type, "body": parsed, "phase": "restore"}
            self._cond.notify_all()
            return Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

    def _restore_pending(self) -> bool:
        with self._lock:
            sb = self._sandbox
            return self.snapstart and sb is not None and not sb.dead and self._restored_gen != sb.gen

    def _restore(self) -> float:
        """Restore phase of the snapshot the current sandbox's Init left; the restore ms.
        EmulatorError if the runtime failed or did not come back within RESTORE_TIMEOUT_S."""
        with self._cond:
            sb = self._sandbox
            if sb is None or sb.dead or not self.snapstart or self._restored_gen == sb.gen:
                raise EmulatorError("no SnapStart snapshot to restore")
            self._emit(sb, "platform.restoreStart", {
                "functionName": self.function_name, "functionVersion": FUNCTION_VERSION,
                "runtimeVersion": "python:%d.%d.emulated" % sys.version_info[:2],
                "instanceMaxMemory": self.memory_mb})
        t0 = time.monotonic()
        self._thaw()
        with self._cond:
            self._restored_gen = sb.gen
            sb.rt.done = False
            self._cond.notify_all()
            ok = self._wait_until(lambda: sb.rt.done or sb.rt.init_error is not None or self._crash(sb) is not None,
                                  t0 + RESTORE_TIMEOUT_S)
            duration_ms = (time.monotonic() - t0) * 1000.0
            failed = sb.rt.init_error is not None or self._crash(sb) is not None
            status = "success" if ok and not failed else ("failure" if failed else "timeout")
            record = {"status": status}
            if status != "success":
                record["errorType"] = "Runtime.AfterRestoreError" if sb.rt.init_error else "Runtime.RestoreTimeout"
            self._emit(sb, "platform.restoreRuntimeDone", dict(record))
            record["metrics"] = {"durationMs": round(duration_ms, 3)}
            self._emit(sb, "platform.restoreReport", record)
            sb.report_once = {"restoreDurationMs": round(duration_ms, 3)} if status == "success" else {}
        if status != "success":
            self._kill_sandbox(sb)
            raise EmulatorError("restore %s: %s\n%s" % (status, sb.rt.init_error or self._crash(sb) or "no invocation/next",
                                                        self._outputs_text(sb)))
        logger.debug("restored in %.1f ms", duration_ms)
        return duration_ms
