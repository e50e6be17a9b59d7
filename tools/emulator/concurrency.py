"""Lambda Managed Instances (``init_type="lambda-managed-instances"``): several invocations at once.

As on Lambda Managed Instances with a Python runtime: the runtime gets AWS_LAMBDA_MAX_CONCURRENCY
and awslambdaric forks that many worker processes, each long-polling ``invocation/next``, so
overlapping requests run in separate processes. Extensions may register for SHUTDOWN only
(INVOKE gets ``403 Extension.InvalidEventType``), the Telemetry API accepts only schema
2025-01-29, the sandbox is never frozen, there is no ``platform.runtimeDone`` (``platform.start``
and ``platform.report`` of overlapping requests interleave), and a timed-out invocation is
reported (``status: timeout``) without resetting the sandbox: its worker keeps running.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from tools.emulator.base import EmulatorBase
from tools.emulator.state import FUNCTION_VERSION, EmulatorError, Invocation, InvokeResult, Sandbox, payload_bytes

logger = logging.getLogger(__name__)

INFLIGHT_KEEP = 1000  # finished invocations remembered (a late response is then refused, not unknown)


class Concurrency(EmulatorBase):
    """Overlapping invocations of a Managed Instances sandbox."""

    def _invocation_by_id(self, sb: Optional[Sandbox], request_id: str) -> Optional[Invocation]:
        if self.managed and request_id in self._inflight:
            return self._inflight[request_id]
        return super()._invocation_by_id(sb, request_id)  # type: ignore[misc]

    def _invoke_concurrently(self, payloads: Sequence[Union[Dict[str, Any], bytes, None]]) -> List[InvokeResult]:
        """Deliver every payload at once; wait until each is answered or past its deadline."""
        if not self.managed:
            raise EmulatorError("overlapping invocations need init_type='lambda-managed-instances'")
        with self._cond:
            sb = self._sandbox
            if sb is None or sb.dead:
                raise EmulatorError("no sandbox")
            invs = [self._start_one(sb, payload) for payload in payloads]
            self._cond.notify_all()
            last_deadline = max(inv.deadline_mono for inv in invs)

            def ended(inv: Invocation) -> bool:
                return inv.t_response is not None or time.monotonic() >= inv.deadline_mono

            self._wait_until(lambda: all(ended(inv) for inv in invs) or self._crash(sb) is not None, last_deadline)
            crash = self._crash(sb)
            results = [self._report_one(sb, inv, crash) for inv in invs]
            sb.phase = "ready"
            while len(self._inflight) > INFLIGHT_KEEP:
                self._inflight.pop(next(iter(self._inflight)))
        if crash is not None:
            logger.warning("managed instance failed: %s: shutting the sandbox down", crash)
            shutdown = self._shutdown_sandbox(sb, "failure")
            with self._lock:
                self.shutdowns.append(shutdown)
            for result in results:
                result.shutdown = shutdown
        return results

    def _start_one(self, sb: Sandbox, payload: Union[Dict[str, Any], bytes, None]) -> Invocation:
        """Queue one invocation for whichever worker asks next (lock held); emits platform.start."""
        inv = self._new_invocation(payload_bytes(payload))
        self._inflight[inv.request_id] = inv
        sb.phase = "invoke"
        self._emit(sb, "platform.start", {"requestId": inv.request_id, "version": FUNCTION_VERSION})
        sb.rt.queue.append(inv)
        return inv

    def _report_one(self, sb: Sandbox, inv: Invocation, crash: Optional[str]) -> InvokeResult:
        """End one invocation (lock held): its platform.report (durationMs only, as on Managed
        Instances) and result; a timeout does not reset the sandbox."""
        end_t = inv.t_response if inv.t_response is not None else time.monotonic()
        if inv.t_response is not None:
            status = inv.status or "success"
        elif crash is not None:
            status, inv.error_type = "error", "Runtime.ExitError"
        else:
            status, inv.error_type = "timeout", "Sandbox.Timedout"
        inv.finished = True
        duration_ms = (end_t - inv.t_deliver) * 1000.0
        record: Dict[str, Any] = {"requestId": inv.request_id, "status": status,
                                  "metrics": {"durationMs": round(duration_ms, 3)}}
        if status != "success" and inv.error_type:
            record["errorType"] = inv.error_type
        self._emit(sb, "platform.report", record)
        return InvokeResult(
            request_id=inv.request_id,
            status=status,
            response=inv.response,
            deadline_ms=inv.deadline_ms,
            runtime_ms=duration_ms if inv.t_response is not None else None,
            post_runtime_ms=None,
            extension_next_ms={},
            extensions_before_deadline={},
            freeze_t=None,
            reset=False,
            error_type=inv.error_type,
            duration_ms=duration_ms,
        )
