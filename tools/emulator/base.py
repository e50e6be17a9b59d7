"""``EmulatorBase``: the configuration and shared state every part of the emulator works on
(one lock/condition guards all of it), and the waiting helpers they share. The API mixins
(runtime_api, extensions_api, telemetry), process control (processes) and the phases
(lifecycle) all derive from it; ``Emulator`` (emulator.py) puts them together."""

from __future__ import annotations

import collections
import datetime
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from tools.emulator.server import ApiServer
from tools.emulator.state import (ACCOUNT_ID, FUNCTION_VERSION, LONG_POLL_MAX_S, MAX_WAIT_ROUNDS, REGION,
                                  EmulatorError, Invocation, InvokeResult, Sandbox, ShutdownResult, epoch_ms)

logger = logging.getLogger(__name__)

CALLS_MAX = 100000
MANAGED_INSTANCES = "lambda-managed-instances"
INIT_TYPES = ("on-demand", "provisioned-concurrency", "snap-start", MANAGED_INSTANCES)


class EmulatorBase:
    """Configuration and shared state of an emulator (see ``Emulator`` for the arguments)."""

    def __init__(
        self,
        opt_dir: Union[Path, str],
        runtime_cmd: Optional[List[str]] = None,
        task_root: Union[Path, str, None] = None,
        handler: str = "app.handler",
        env: Optional[Dict[str, str]] = None,
        runtime_env: Optional[Dict[str, str]] = None,
        function_name: str = "emulated-function",
        timeout_s: float = 10.0,
        memory_mb: int = 128,
        freeze: bool = True,
        telemetry: bool = True,
        shutdown_window_ms: int = 2000,
        init_timeout_s: float = 10.0,
        exec_wrapper: Optional[str] = None,
        preexec: Optional[Callable[[], None]] = None,
        init_type: str = "on-demand",
        max_concurrency: int = 0,
        before_snapshot: Optional[Callable[[], None]] = None,
    ) -> None:
        if task_root is None:
            raise ValueError("task_root is required")
        self.opt_dir = Path(opt_dir).resolve()
        self.task_root = Path(task_root).resolve()
        self.handler = handler
        self.runtime_cmd: List[str] = (
            list(runtime_cmd) if runtime_cmd is not None else [sys.executable, "-m", "awslambdaric", handler]
        )
        self.env: Dict[str, str] = dict(env or {})
        self.runtime_env: Dict[str, str] = dict(runtime_env or {})
        self.function_name = function_name
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.freeze_enabled = bool(freeze)
        self.telemetry = bool(telemetry)
        self.shutdown_window_ms = int(shutdown_window_ms)
        self.init_timeout_s = float(init_timeout_s)
        self.exec_wrapper = exec_wrapper
        # Run in each launched process between fork and exec (e.g. to join a CPU-quota cgroup).
        self.preexec = preexec
        if init_type not in INIT_TYPES:
            raise ValueError("init_type must be one of %s" % ", ".join(INIT_TYPES))
        self.init_type = init_type  # AWS_LAMBDA_INITIALIZATION_TYPE and initializationType of the records
        self.snapstart = init_type == "snap-start"
        self.managed = init_type == MANAGED_INSTANCES  # see concurrency.py
        self.max_concurrency = int(max_concurrency) or (4 if self.managed else 1)
        if self.managed:
            self.freeze_enabled = False  # Managed Instances are never frozen
        # snap-start: called after Init, before the snapshot (when Lambda takes it is its business)
        self.before_snapshot = before_snapshot
        self.function_arn = "arn:aws:lambda:%s:%s:function:%s" % (REGION, ACCOUNT_ID, function_name)
        self.log_stream_name = "%s/[%s]%s" % (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y/%m/%d"),
            FUNCTION_VERSION,
            uuid.uuid4().hex,
        )

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._op_lock = threading.RLock()
        self._out_lock = threading.Lock()
        self._closed_event = threading.Event()
        self._closing = False
        self._closed = False
        self._server: Optional[ApiServer] = None
        self._server_thread: Optional[threading.Thread] = None
        self._sandbox: Optional[Sandbox] = None
        self._gen = 0
        self._frozen = False
        self._freezing = False
        self._outputs: Dict[str, bytearray] = {}
        self._calls: Deque[Tuple[float, str, str]] = collections.deque(maxlen=CALLS_MAX)
        self._freeze_times: List[float] = []
        self._extension_errors: List[Dict[str, Any]] = []
        self._registrations: List[Dict[str, Any]] = []
        self.invocations: List[InvokeResult] = []
        self.shutdowns: List[ShutdownResult] = []
        self.last_init_ms: Optional[float] = None
        self._restored_gen = 0  # snap-start: the sandbox generation whose snapshot was restored
        self._inflight: Dict[str, Invocation] = {}  # managed instances: invocations by request id

    @property
    def api_address(self) -> str:
        """``host:port`` of the API server (the value of AWS_LAMBDA_RUNTIME_API)."""
        if self._server is None:
            raise EmulatorError("emulator not started")
        return "127.0.0.1:%d" % self._server.server_port

    def _check_open(self) -> None:
        if self._closing:
            raise EmulatorError("emulator is closed")

    def _wait_until(self, predicate: Callable[[], bool], deadline: float, ignore_closing: bool = False) -> bool:
        """Wait on the condition (lock held by caller) until predicate() or the monotonic deadline."""
        for _ in range(MAX_WAIT_ROUNDS):
            if predicate():
                return True
            if self._closing and not ignore_closing:
                raise EmulatorError("emulator closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return predicate()
            self._cond.wait(min(remaining, 0.5))
        return predicate()

    def _new_invocation(self, body: bytes) -> Invocation:
        """A new invocation of ``body``: its request id, trace id and deadline (``timeout_s`` from now)."""
        now = time.monotonic()
        return Invocation(
            request_id=str(uuid.uuid4()),
            payload=body,
            deadline_ms=epoch_ms() + int(self.timeout_s * 1000),
            deadline_mono=now + self.timeout_s,
            trace_id="Root=1-%08x-%s;Parent=%s;Sampled=0" % (int(time.time()), uuid.uuid4().hex[:24], uuid.uuid4().hex[:16]),
            arn=self.function_arn,
            t_deliver=now,
        )

    def _record_call(self, who: str, what: str) -> None:
        self._calls.append((time.monotonic(), who, what))

    def _long_poll(self, sb: Sandbox, queue: Deque[Any]) -> Optional[Any]:
        """Block (lock held) until ``queue`` has an item; None if the sandbox/emulator went away."""
        deadline = time.monotonic() + LONG_POLL_MAX_S
        for _ in range(MAX_WAIT_ROUNDS):
            if queue:
                return queue.popleft()
            if self._closing or self._sandbox is not sb or sb.dead:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._cond.wait(min(remaining, 1.0))
        return None

