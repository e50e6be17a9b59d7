"""``Emulator``: the public class, putting together the APIs, process control and the lifecycle."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Dict, List, Tuple, Union

from tools.emulator.concurrency import Concurrency
from tools.emulator.extensions_api import ExtensionsApi
from tools.emulator.lifecycle import InitFailed, Lifecycle
from tools.emulator.runtime_api import RuntimeApi
from tools.emulator.server import ApiServer, Reply, json_reply
from tools.emulator.snapstart import SnapStart
from tools.emulator.state import EmulatorError, InvokeResult, ShutdownResult, epoch_ms

logger = logging.getLogger(__name__)

CLOSE_OP_LOCK_WAIT_S = 10.0


class Emulator(Lifecycle, SnapStart, Concurrency, RuntimeApi, ExtensionsApi):
    """A local AWS Lambda sandbox: Runtime, Extensions and Telemetry APIs plus lifecycle.

    Arguments: ``opt_dir`` (stands in for /opt: every executable in its ``extensions/`` is
    launched), ``runtime_cmd`` (default ``python -m awslambdaric <handler>``), ``task_root``
    (/var/task), ``handler``, ``env`` (the function's environment, runtime and extensions),
    ``runtime_env`` (the runtime's only), ``function_name``, ``timeout_s``, ``memory_mb``,
    ``freeze`` (SIGSTOP between invocations), ``telemetry`` (False: subscriptions get 202
    NotSupported), ``shutdown_window_ms``, ``init_timeout_s``, ``exec_wrapper``, ``init_type``
    (AWS_LAMBDA_INITIALIZATION_TYPE; ``snap-start``: see snapstart.py; ``lambda-managed-instances``:
    see concurrency.py), ``max_concurrency`` (Managed Instances' runtime workers, default 4),
    ``before_snapshot`` (snap-start: called between Init and the snapshot), ``preexec`` (called
    in every launched process before it execs, e.g. ``tools.cgroup_cpu.CpuQuota.join``: the sandbox's
    processes then start inside that cgroup, as a whole sandbox shares Lambda's CPU share).
    """

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def frozen(self) -> bool:
        with self._lock:
            return self._frozen

    @property
    def calls(self) -> List[Tuple[float, str, str]]:
        """``(time.monotonic(), who, what)`` for each API call (who: extension name or "runtime")."""
        with self._lock:
            return list(self._calls)

    @property
    def freeze_times(self) -> List[float]:
        with self._lock:
            return list(self._freeze_times)

    @property
    def extension_errors(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._extension_errors]

    @property
    def registrations(self) -> List[Dict[str, Any]]:
        """``{"name","id","events","gen"}`` of every extension registration, across sandboxes."""
        with self._lock:
            return [dict(r) for r in self._registrations]

    @property
    def pids(self) -> Dict[str, int]:
        """Pids of the live processes of the current sandbox (extension basenames and "runtime")."""
        with self._lock:
            sb = self._sandbox
            if sb is None:
                return {}
            return {p.name: p.pid for p in sb.all_procs() if p.alive}

    def output(self, name: str) -> str:
        """Captured stdout+stderr (last 2 MiB) of an extension (executable basename) or "runtime"."""
        with self._out_lock:
            buf = self._outputs.get(name)
            return bytes(buf).decode("utf-8", "replace") if buf is not None else ""

    def wait_frozen_for(self, seconds: float) -> None:
        """Spend ``seconds`` of scenario time with the sandbox frozen (the time between invokes)."""
        if seconds <= 0:
            return
        if not self.frozen:
            logger.debug("wait_frozen_for(%.3f) while the sandbox is not frozen", seconds)
        self._closed_event.wait(seconds)

    def start(self) -> None:
        """Start the API server and run Init. Raises EmulatorError if Init fails."""
        with self._op_lock:
            self._check_open()
            self._ensure_server()
            with self._lock:
                live = self._sandbox is not None and not self._sandbox.dead
            if not live:
                self._init()

    def invoke(self, payload: Union[Dict[str, Any], bytes, None] = None) -> InvokeResult:
        """Run one invocation (re-initialising first if the sandbox was reset or shut down)."""
        with self._op_lock:
            self._check_open()
            self._ensure_server()
            cold = False
            with self._lock:
                need_init = self._sandbox is None or self._sandbox.dead
            if need_init:
                try:
                    self._init()
                except InitFailed as exc:
                    # As Lambda answers the invoke that met a failed Init: an error, and a reset.
                    result = InvokeResult(request_id=str(uuid.uuid4()), status="error", response=None,
                                          deadline_ms=epoch_ms(), runtime_ms=None, post_runtime_ms=None,
                                          extension_next_ms={}, extensions_before_deadline={}, freeze_t=None,
                                          reset=True, error_type=exc.error_type, cold_start=True,
                                          shutdown=exc.shutdown, init_failed=True)
                    with self._lock:
                        self.invocations.append(result)
                    return result
                cold = True
            if self._restore_pending():
                self._restore()
            result = self._invoke_concurrently([payload])[0] if self.managed else self._invoke(payload)
            result.cold_start = cold
            if cold:
                result.init_ms = self.last_init_ms
            with self._lock:
                self.invocations.append(result)
            return result

    def invoke_concurrently(self, payloads: List[Union[Dict[str, Any], bytes, None]]) -> List[InvokeResult]:
        """Managed Instances: run ``payloads`` as overlapping invocations (one worker each, up to
        ``max_concurrency`` at a time); their results in the same order."""
        with self._op_lock:
            self._check_open()
            self._ensure_server()
            with self._lock:
                need_init = self._sandbox is None or self._sandbox.dead
            if need_init:
                self._init()
            results = self._invoke_concurrently(payloads)
            with self._lock:
                self.invocations.extend(results)
            return results

    def restore(self, after_s: float = 0.0) -> float:
        """SnapStart: stay frozen ``after_s`` more (the snapshot lies in storage), then restore it
        (see snapstart.py); the restore ms. Invoking without it restores first."""
        with self._op_lock:
            self._check_open()
            if not self._restore_pending():
                raise EmulatorError("no SnapStart snapshot to restore (init_type=%r)" % self.init_type)
            self.wait_frozen_for(after_s)
            return self._restore()

    def shutdown(self, reason: str = "spindown") -> ShutdownResult:
        """Shutdown phase: SIGTERM the runtime, SHUTDOWN to extensions, SIGKILL at the deadline."""
        with self._op_lock:
            self._check_open()
            with self._lock:
                sb = self._sandbox
            if sb is None or sb.dead:
                result = ShutdownResult(reason=reason, deadline_ms=epoch_ms())
            else:
                result = self._shutdown_sandbox(sb, reason)
            with self._lock:
                self.shutdowns.append(result)
            return result

    def close(self) -> None:
        """Kill everything the emulator started and stop its servers. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._closed_event.set()
            self._cond.notify_all()
        got_lock = self._op_lock.acquire(timeout=CLOSE_OP_LOCK_WAIT_S)
        try:
            with self._lock:
                sb = self._sandbox
            if sb is not None and not sb.dead:
                self._kill_sandbox(sb)
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            if self._server_thread is not None:
                self._server_thread.join(timeout=2.0)
        finally:
            self._closed = True
            if got_lock:
                self._op_lock.release()

    def _ensure_server(self) -> None:
        if self._server is not None:
            return
        self._server = ApiServer(self)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="lambda-emulator-api",
            daemon=True,
        )
        self._server_thread.start()
        logger.debug("emulator API listening on %s", self.api_address)

    def _handle(self, method: str, path: str, headers: Any, body: bytes) -> Reply:
        for route in (self._route_runtime, self._route_restore, self._route_extensions, self._route_telemetry):
            reply = route(method, path, headers, body)
            if reply is not None:
                return reply
        logger.warning("emulator API: unknown endpoint %s %s", method, path)
        return json_reply(404, "NotFound", "unknown endpoint %s %s" % (method, path))
