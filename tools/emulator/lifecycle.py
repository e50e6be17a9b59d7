"""The Lambda lifecycle phases: Init (launch and register extensions, start the runtime, wait
for every ``next``), Invoke (deliver INVOKE, wait for the response and every extension's
``next`` or the deadline; a timeout or crash resets the sandbox) and Shutdown (SIGTERM the
runtime, SHUTDOWN to extensions, SIGKILL at the deadline)."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from tools import procfs
from tools.emulator.processes import KILL_WAIT_S, ProcessControl
from tools.emulator.state import (FUNCTION_VERSION, EmulatorError, Ext, Invocation, InvokeResult, Sandbox, ShutdownResult,
                                  epoch_ms, payload_bytes)
from tools.emulator.telemetry import TelemetryApi

logger = logging.getLogger(__name__)

RUNTIME_SIGTERM_GRACE_S = 0.3
MEMORY_POLL_S = 0.02  # how often the sandbox's resident memory is checked against memory_mb
OUT_OF_MEMORY = "Runtime.OutOfMemory"
EXIT_ERROR = "Runtime.ExitError"
TIMED_OUT = "Sandbox.Timedout"


class InitFailed(EmulatorError):
    """The runtime reported an Init error (``/runtime/init/error``) or died during Init; the
    sandbox was reset (SHUTDOWN ``failure`` to the extensions, as Lambda does)."""

    def __init__(self, message: str, error_type: Optional[str], shutdown: ShutdownResult) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.shutdown = shutdown


class Lifecycle(ProcessControl, TelemetryApi):
    """Init, Invoke and Shutdown phases of one sandbox."""

    def _init(self) -> None:
        """Init phase: launch and register extensions, start the runtime, wait for every next."""
        with self._cond:
            self._gen += 1
            sb = Sandbox(self._gen)
            self._sandbox = sb
            self._frozen = False
            self._emit(
                sb,
                "platform.initStart",
                {
                    "initializationType": self.init_type,
                    "phase": "init",
                    "runtimeVersion": "python:%d.%d.emulated" % sys.version_info[:2],
                    "functionName": self.function_name,
                    "functionVersion": FUNCTION_VERSION,
                },
            )
        deadline = sb.init_start_t + self.init_timeout_s
        try:
            self._init_extensions(sb, deadline)
            init_ms = self._init_runtime(sb, deadline)
            logger.debug("Init done in %.1f ms (%d extensions)", init_ms, len(sb.extensions))
        except InitFailed:
            raise
        except BaseException as exc:
            self._kill_sandbox(sb)
            if isinstance(exc, EmulatorError):
                raise EmulatorError("%s\n%s" % (exc, self._outputs_text(sb))) from None
            raise
        if self.snapstart and self.before_snapshot is not None:
            self.before_snapshot()
        self._freeze()  # with snap-start: the snapshot (see snapstart.py)

    def _init_extensions(self, sb: Sandbox, deadline: float) -> None:
        """Launch every extension and wait until each has registered (EmulatorError otherwise)."""
        ext_env = self._base_env()
        for path in self._extension_paths():
            proc = self._launch(path.name, "extension", [str(path)], self.opt_dir, ext_env)
            with self._cond:
                sb.procs.append(proc)
        with self._cond:
            expected = len(sb.procs)
            ok = self._wait_until(lambda: len(sb.extensions) >= expected or self._crash(sb) is not None, deadline)
            crash = self._crash(sb)
            if crash is not None:
                raise EmulatorError("Init failed before the runtime started: %s" % crash)
            if not ok:
                raise EmulatorError(
                    "Init timed out after %.1fs: %d of %d extensions registered"
                    % (self.init_timeout_s, len(sb.extensions), expected)
                )

    def _init_runtime(self, sb: Sandbox, deadline: float) -> float:
        """Start the runtime and wait until it and every extension called ``next``; the Init ms."""
        argv = list(self.runtime_cmd)
        if self.exec_wrapper:
            argv = [self.exec_wrapper] + argv
        rt_proc = self._launch("runtime", "runtime", argv, self.task_root, self._runtime_env())
        with self._cond:
            sb.runtime = rt_proc

            def init_done() -> bool:
                return sb.rt.done and all(e.done for e in sb.extensions.values())

            ok = self._wait_until(
                lambda: init_done() or sb.rt.init_error is not None or self._crash(sb) is not None, deadline
            )
            init_error = sb.rt.init_error
            if init_error is None and not rt_proc.alive:
                init_error = {"error_type": EXIT_ERROR, "body": "runtime exited with %s" % rt_proc.exit_code}
        if init_error is not None:
            self._fail_init(sb, init_error)
        with self._cond:
            crash = self._crash(sb)
            if crash is not None:
                raise EmulatorError("Init failed: %s" % crash)
            if not ok:
                waiting = [e.name for e in sb.extensions.values() if not e.done]
                if not sb.rt.done:
                    waiting.append("runtime")
                raise EmulatorError(
                    "Init timed out after %.1fs waiting for next from: %s" % (self.init_timeout_s, ", ".join(waiting))
                )
            init_ms = (time.monotonic() - sb.init_start_t) * 1000.0
            self.last_init_ms = init_ms
            if self.init_type == "on-demand":  # a restored sandbox reports its restore instead; provisioned none
                sb.report_once["initDurationMs"] = round(init_ms, 3)
            self._emit(
                sb,
                "platform.initReport",
                {
                    "initializationType": self.init_type,
                    "phase": "init",
                    "status": "success",
                    "metrics": {"durationMs": round(init_ms, 3)},
                },
            )
            sb.phase = "ready"
        return init_ms

    def _fail_init(self, sb: Sandbox, init_error: Dict[str, Any]) -> None:
        """A failed Init as Lambda reports it: ``platform.initRuntimeDone`` (when the runtime did
        not post it itself) and ``platform.initReport`` with status ``error`` and the errorType,
        then a reset (SHUTDOWN ``failure``); raises InitFailed."""
        error_type = init_error.get("error_type") or "Runtime.Unknown"
        with self._cond:
            if not sb.rt.init_done_emitted:
                self._emit_init_runtime_done(sb, "error", error_type)
            self._emit(
                sb,
                "platform.initReport",
                {
                    "initializationType": self.init_type,
                    "phase": "init",
                    "status": "error",
                    "errorType": error_type,
                    "metrics": {"durationMs": round((time.monotonic() - sb.init_start_t) * 1000.0, 3)},
                },
            )
        logger.info("Init failed (%s): resetting the sandbox", error_type)
        shutdown = self._shutdown_sandbox(sb, "failure")
        with self._lock:
            self.shutdowns.append(shutdown)
        raise InitFailed("runtime reported an Init error: %r\n%s" % (init_error, self._outputs_text(sb)),
                         error_type, shutdown)

    def _invoke(self, payload: Union[Dict[str, Any], bytes, None]) -> InvokeResult:
        """Invoke phase: thaw, deliver INVOKE, wait for its outcome, report; then freeze or reset."""
        with self._lock:
            sb = self._sandbox
        assert sb is not None
        body = payload_bytes(payload)
        self._thaw()
        with self._cond:
            inv, invoke_exts = self._deliver_invoke(sb, body)
            status, reset_reason = self._await_outcome(sb, inv, invoke_exts)
            inv.finished = True
            result = self._invoke_result(sb, inv, invoke_exts, status, reset_reason)
            if reset_reason is None:
                sb.phase = "ready"
        if reset_reason is not None:
            logger.info("invocation %s ended with %s: resetting the sandbox (%s)", inv.request_id, status, reset_reason)
            result.shutdown = self._shutdown_sandbox(sb, reset_reason)
            with self._lock:
                self.shutdowns.append(result.shutdown)
        else:
            result.freeze_t = self._freeze()
        return result

    def _deliver_invoke(self, sb: Sandbox, body: bytes) -> Tuple[Invocation, List[Ext]]:
        """Start an invocation (lock held): queue it for the runtime and INVOKE for the extensions
        registered for it; the extensions it went to."""
        invoke_exts: List[Ext] = []
        sb.phase = "invoke"
        inv = self._new_invocation(body)
        sb.invocation = inv
        self._emit(sb, "platform.start", {"requestId": inv.request_id, "version": FUNCTION_VERSION,
                                          "tracing": {"type": "X-Amzn-Trace-Id", "value": inv.trace_id}})
        sb.rt.done = False
        sb.rt.queue.append(inv)
        event = json.dumps(
            {
                "eventType": "INVOKE",
                "deadlineMs": inv.deadline_ms,
                "requestId": inv.request_id,
                "invokedFunctionArn": self.function_arn,
                "tracing": {"type": "X-Amzn-Trace-Id", "value": inv.trace_id},
            }
        ).encode()
        for ext in sb.extensions.values():
            if "INVOKE" in ext.events and not ext.errored:
                ext.done = False
                ext.queue.append(event)
                invoke_exts.append(ext)
        self._cond.notify_all()
        return inv, invoke_exts

    def _await_outcome(self, sb: Sandbox, inv: Invocation, invoke_exts: List[Ext]) -> Tuple[str, Optional[str]]:
        """Wait (lock held) for the invocation to end: ``(status, reset reason or None)``.

        Success: the runtime responded and it and every INVOKE extension called ``next`` before
        the deadline. A crashed process or an extension error is a ``failure`` reset, the deadline
        a ``timeout`` reset (the place for further failure modes)."""
        # 1. wait for the runtime's response (or error), a crash, or the deadline
        self._watch(sb, inv, lambda: inv.t_response is not None or self._crash(sb) is not None)
        crash = self._crash(sb)
        status: str
        reset_reason: Optional[str] = None
        if inv.t_response is None:
            if crash is not None:
                status, reset_reason = "error", "failure"
                inv.error_type = self._crash_type(sb, inv)
            else:
                status, reset_reason = "timeout", "timeout"
                inv.error_type = TIMED_OUT
            if sb.runtime is not None and (crash is None or "runtime" in crash):
                self._emit_runtime_done(sb, inv, status)
        else:
            # 2. wait for the runtime and every INVOKE extension to call next again
            self._watch(sb, inv, lambda: (sb.rt.done and all(e.done for e in invoke_exts)) or self._crash(sb) is not None)
            crash = self._crash(sb)
            all_done = sb.rt.done and all(e.done for e in invoke_exts)
            if crash is not None:
                status, reset_reason = "error", "failure"
                inv.error_type = self._crash_type(sb, inv)
            elif not all_done:
                status, reset_reason = "timeout", "timeout"
                inv.error_type = TIMED_OUT
            else:
                status = inv.status or "success"
        if crash is not None:
            logger.warning("invocation %s: %s", inv.request_id, crash)
        return status, reset_reason

    def _watch(self, sb: Sandbox, inv: Invocation, predicate: Any) -> None:
        """Wait (lock held) for ``predicate`` or the invoke deadline, enforcing ``memory_mb`` on
        the whole sandbox as Lambda does: when the resident memory of every process (extensions
        and the runtime, children included) exceeds it, the runtime is SIGKILLed."""
        for _ in range(10_000_000):
            slice_end = min(inv.deadline_mono, time.monotonic() + MEMORY_POLL_S)
            if self._wait_until(predicate, slice_end) or time.monotonic() >= inv.deadline_mono:
                return
            rt = sb.runtime
            if rt is None or not rt.alive or inv.oom_killed:
                continue
            used_kib = procfs.tree_rss_kib([p.pid for p in sb.all_procs() if p.alive])
            if used_kib > self.memory_mb * 1024:
                logger.info("sandbox uses %d MB of %d MB: killing the runtime (out of memory)", used_kib // 1024,
                            self.memory_mb)
                inv.oom_killed = True
                self._signal(rt, signal.SIGKILL)

    @staticmethod
    def _crash_type(sb: Sandbox, inv: Invocation) -> str:
        if sb.runtime is not None and not sb.runtime.alive:
            return OUT_OF_MEMORY if inv.oom_killed else EXIT_ERROR
        return "Extension.Crash"

    def _emit_runtime_done(self, sb: Sandbox, inv: Invocation, status: str) -> None:
        """``platform.runtimeDone`` for an invocation the runtime never answered (lock held)."""
        self._sync_function_logs(sb)
        self._emit(
            sb,
            "platform.runtimeDone",
            {
                "requestId": inv.request_id,
                "status": status,
                "errorType": inv.error_type,
                "metrics": {"durationMs": round((time.monotonic() - inv.t_deliver) * 1000.0, 3), "producedBytes": 0},
                "tracing": {"type": "X-Amzn-Trace-Id", "value": inv.trace_id},
            },
        )

    def _invoke_result(self, sb: Sandbox, inv: Invocation, invoke_exts: List[Ext], status: str,
                       reset_reason: Optional[str]) -> InvokeResult:
        """Timings of the ended invocation, and its ``platform.report`` record (lock held)."""
        end_t = time.monotonic()
        if inv.t_response is not None:
            runtime_ms: Optional[float] = (inv.t_response - inv.t_deliver) * 1000.0
            done_times = [e.next_t for e in invoke_exts if e.done and e.next_t is not None]
            ext_next_ms = {
                e.name: (e.next_t - inv.t_response) * 1000.0
                for e in invoke_exts
                if e.done and e.next_t is not None
            }
            if len(done_times) == len(invoke_exts):
                last = max(done_times) if done_times else inv.t_response
            else:
                last = end_t
            post_runtime_ms: Optional[float] = max(0.0, (last - inv.t_response) * 1000.0)
            finish_t = max(last, sb.rt.next_t or inv.t_response) if reset_reason is None else end_t
        else:
            runtime_ms = None
            post_runtime_ms = None
            ext_next_ms = {}
            finish_t = end_t
        before_deadline = {
            e.name: bool(e.done and e.next_t is not None and e.next_t <= inv.deadline_mono) for e in invoke_exts
        }
        duration_ms = (finish_t - inv.t_deliver) * 1000.0
        hwm_kib = sum((procfs.status_kib(p.pid, "VmHWM") or 0) for p in sb.all_procs() if p.alive)
        used_mb = self.memory_mb if inv.oom_killed else min(self.memory_mb, int(math.ceil(hwm_kib / 1024.0)))
        report: Dict[str, Any] = {
            "requestId": inv.request_id,
            "status": status,
            "metrics": {
                "durationMs": round(duration_ms, 3),
                "billedDurationMs": int(math.ceil(duration_ms)),
                "memorySizeMB": self.memory_mb,
                "maxMemoryUsedMB": used_mb,
                **sb.report_once,
            },
            "tracing": {"type": "X-Amzn-Trace-Id", "value": inv.trace_id},
        }
        if status != "success" and inv.error_type:
            report["errorType"] = inv.error_type
        sb.report_once = {}
        self._emit(sb, "platform.report", report)
        return InvokeResult(
            request_id=inv.request_id,
            status=status,
            response=inv.response,
            deadline_ms=inv.deadline_ms,
            runtime_ms=runtime_ms,
            post_runtime_ms=post_runtime_ms,
            extension_next_ms=ext_next_ms,
            extensions_before_deadline=before_deadline,
            freeze_t=None,
            reset=reset_reason is not None,
            error_type=inv.error_type,
            duration_ms=duration_ms,
        )

    def _shutdown_sandbox(self, sb: Sandbox, reason: str) -> ShutdownResult:
        """Shutdown phase of ``sb``; leaves it dead (the next invoke re-inits)."""
        start = time.monotonic()
        deadline_mono = start + self.shutdown_window_ms / 1000.0
        deadline_ms = epoch_ms() + self.shutdown_window_ms
        result = ShutdownResult(reason=reason, deadline_ms=deadline_ms)
        try:
            self._thaw()
            with self._cond:
                sb.phase = "shutdown"
                rt = sb.runtime
            # The runtime: SIGTERM, then SIGKILL after the grace period.
            if rt is not None and rt.alive:
                self._signal(rt, signal.SIGTERM)
                with self._cond:
                    exited = self._wait_until(lambda: not rt.alive, time.monotonic() + RUNTIME_SIGTERM_GRACE_S)
                if not exited:
                    logger.debug("runtime ignored SIGTERM for %.0f ms: SIGKILL", RUNTIME_SIGTERM_GRACE_S * 1000)
                    self._signal(rt, signal.SIGKILL)
                    with self._cond:
                        self._wait_until(lambda: not rt.alive, time.monotonic() + KILL_WAIT_S)
            # Extensions: SHUTDOWN to those registered for it, then wait until the deadline.
            with self._cond:
                shutdown_names = {e.name for e in sb.extensions.values() if "SHUTDOWN" in e.events}
                registered = {e.name for e in sb.extensions.values()}
                unmatched = registered - {p.name for p in sb.procs}
                event = json.dumps(
                    {"eventType": "SHUTDOWN", "shutdownReason": reason, "deadlineMs": deadline_ms}
                ).encode()
                t_deliver = time.monotonic()
                for ext in sb.extensions.values():
                    if "SHUTDOWN" in ext.events:
                        ext.queue.append(event)
                self._cond.notify_all()
                ext_procs = list(sb.procs)
            for proc in ext_procs:
                if proc.alive and proc.name not in shutdown_names and not unmatched:
                    # Not registered for SHUTDOWN: nothing to wait for.
                    logger.debug("extension %s is not registered for SHUTDOWN: SIGKILL", proc.name)
                    if self._signal(proc, signal.SIGKILL):
                        result.killed.append(proc.name)
            with self._cond:
                self._wait_until(lambda: all(not p.alive for p in ext_procs), deadline_mono)
                stragglers = [p for p in ext_procs if p.alive]
            for proc in stragglers:
                logger.info("extension %s still running at the SHUTDOWN deadline: SIGKILL", proc.name)
                if self._signal(proc, signal.SIGKILL) and proc.name not in result.killed:
                    result.killed.append(proc.name)
            with self._cond:
                self._wait_until(lambda: all(not p.alive for p in ext_procs), time.monotonic() + KILL_WAIT_S)
                for proc in ext_procs:
                    result.exit_codes[proc.name] = proc.exit_code
                    result.exit_ms[proc.name] = (
                        (proc.exit_t - t_deliver) * 1000.0 if proc.exit_t is not None else None
                    )
                result.runtime_exit_code = rt.exit_code if rt is not None else None
        finally:
            self._kill_sandbox(sb)
        logger.debug("shutdown (%s) done: %s", reason, result)
        return result

