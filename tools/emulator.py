"""Local emulator of the AWS Lambda execution environment (sandbox).

Serves the Runtime API (for the real ``awslambdaric``), the Extensions API and the
Telemetry API on one HTTP server bound to 127.0.0.1, launches every executable in
``<opt>/extensions`` plus a runtime process, and drives the Lambda lifecycle:
Init -> Invoke* (with SIGSTOP freezes in between) -> Shutdown, including the
timeout/crash reset that Lambda performs.

Library use::

    with Emulator(opt_dir, None, task_root) as emu:
        emu.start()
        result = emu.invoke({"hello": "world"})
        emu.wait_frozen_for(2.0)
        ...
        emu.shutdown()

Command line: ``python -m tools.emulator --opt DIR --task-root DIR ...`` (see ``main``).

Only processes this emulator started are ever signalled: each one is launched in a
new session (``start_new_session=True``) and signalled through ``os.killpg`` on the
process group it leads.  A group leader is never reaped before its group has been
SIGKILLed, so the group id cannot be reused by an unrelated process meanwhile.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import http.client
import http.server
import json
import logging
import math
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

__all__ = ["Emulator", "EmulatorError", "InvokeResult", "ShutdownResult", "main"]

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
FUNCTION_VERSION = "$LATEST"

RUNTIME_PREFIX = "/2018-06-01/runtime"
EXTENSION_PREFIX = "/2020-01-01/extension"
TELEMETRY_PATH = "/2022-07-01/telemetry"

TELEMETRY_SCHEMA_VERSIONS = frozenset({"2022-07-01", "2022-12-13", "2025-01-29"})
TELEMETRY_TYPES = frozenset({"platform", "function", "extension"})
TELEMETRY_MAX_ITEMS = (1000, 10000)
TELEMETRY_MAX_BYTES = (262144, 1048576)
TELEMETRY_TIMEOUT_MS = (25, 30000)
TELEMETRY_DEFAULT_BUFFERING = {"maxItems": 10000, "maxBytes": 262144, "timeoutMs": 1000}
TELEMETRY_SANDBOX_HOSTS = frozenset({"sandbox.localdomain", "sandbox"})
TELEMETRY_POST_ATTEMPTS = 4
TELEMETRY_POST_TIMEOUT_S = 2.0
TELEMETRY_BACKOFF_S = 0.05
TELEMETRY_LOG_MAX = 2000

EXTENSION_EVENTS = frozenset({"INVOKE", "SHUTDOWN"})

OUTPUT_LIMIT_BYTES = 2 * 1024 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_CHUNKS = 100000
LONG_POLL_MAX_S = 3600.0
MAX_WAIT_ROUNDS = 10_000_000
MAX_DELIVERY_ROUNDS = 10_000_000
RUNTIME_SIGTERM_GRACE_S = 0.3
KILL_WAIT_S = 2.0
FREEZE_INFLIGHT_WAIT_S = 0.25
FREEZE_CONFIRM_S = 0.2
CLOSE_OP_LOCK_WAIT_S = 10.0
CALLS_MAX = 100000

_BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

_INVOCATION_PATH_RE = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")


class EmulatorError(RuntimeError):
    """The emulated sandbox could not be brought up or driven."""


@dataclasses.dataclass
class ShutdownResult:
    """Outcome of a Shutdown phase (explicit ``shutdown()`` or a reset after a timeout/crash).

    ``exit_codes``/``exit_ms``/``killed`` are keyed by extension executable basename;
    ``exit_ms`` is measured from SHUTDOWN delivery to process exit.  Exit codes follow the
    ``subprocess`` convention (negative = killed by that signal).
    """

    reason: str
    deadline_ms: int
    exit_codes: Dict[str, Optional[int]] = dataclasses.field(default_factory=dict)
    exit_ms: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
    killed: List[str] = dataclasses.field(default_factory=list)
    runtime_exit_code: Optional[int] = None


@dataclasses.dataclass
class InvokeResult:
    """Timings and outcome of one invocation.

    ``runtime_ms``: INVOKE delivered -> runtime posted its response (None on timeout/crash).
    ``post_runtime_ms``: runtime response -> last extension's ``next`` (what Lambda bills as
    PostRuntimeExtensionsDuration; clamped at 0; up to the deadline if an extension never
    called ``next``; None if the runtime never responded).
    ``extension_next_ms``: per registered extension name, runtime response -> that extension's
    ``next`` (negative if it called ``next`` before the runtime responded; absent if it never
    called it before the deadline or the runtime never responded).
    """

    request_id: str
    status: str
    response: Optional[bytes]
    deadline_ms: int
    runtime_ms: Optional[float]
    post_runtime_ms: Optional[float]
    extension_next_ms: Dict[str, float]
    extensions_before_deadline: Dict[str, bool]
    freeze_t: Optional[float]
    reset: bool
    error_type: Optional[str] = None
    duration_ms: Optional[float] = None
    cold_start: bool = False
    init_ms: Optional[float] = None
    shutdown: Optional[ShutdownResult] = None


class _Reply(NamedTuple):
    status: int
    headers: Dict[str, str]
    body: bytes


def _json_reply(status: int, error_type: str, message: str) -> _Reply:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return _Reply(status, {"Content-Type": "application/json"}, body)


def _iso_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch_ms() -> int:
    return int(time.time() * 1000)


def _proc_state(pid: int) -> Optional[str]:
    """Scheduler state letter of ``pid`` from /proc (None if unavailable)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    tail = data[data.rfind(b")") + 2:]
    return tail[:1].decode("ascii", "replace") or None


def _proc_hwm_kib(pid: int) -> int:
    try:
        with open("/proc/%d/status" % pid, "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Proc:
    """A process the emulator launched, leader of its own session/process group."""

    def __init__(self, name: str, kind: str, popen: "subprocess.Popen[bytes]") -> None:
        self.name = name
        self.kind = kind  # "extension" | "runtime"
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid
        self.start_t = time.monotonic()
        self.exit_t: Optional[float] = None
        self.exit_code: Optional[int] = None
        self.reaped = False
        self.reader: Optional[threading.Thread] = None
        self.waiter: Optional[threading.Thread] = None

    @property
    def alive(self) -> bool:
        return self.exit_t is None


@dataclasses.dataclass
class _Invocation:
    request_id: str
    payload: bytes
    deadline_ms: int
    deadline_mono: float
    trace_id: str
    arn: str
    t_deliver: float
    t_response: Optional[float] = None
    response: Optional[bytes] = None
    status: Optional[str] = None
    error_type: Optional[str] = None
    finished: bool = False


class _Subscriber:
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


@dataclasses.dataclass
class _Ext:
    ext_id: str
    name: str
    events: Tuple[str, ...]
    registered_t: float
    queue: Deque[bytes] = dataclasses.field(default_factory=collections.deque)
    done: bool = False  # waiting in next with nothing pending
    next_t: Optional[float] = None
    errored: Optional[str] = None
    subscriber: Optional[_Subscriber] = None


@dataclasses.dataclass
class _RuntimeState:
    queue: Deque[_Invocation] = dataclasses.field(default_factory=collections.deque)
    done: bool = False
    next_t: Optional[float] = None
    first_next_t: Optional[float] = None
    init_error: Optional[Dict[str, Any]] = None


class _Sandbox:
    """State of one execution environment instance (between an Init and its Shutdown)."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.phase = "init"  # init | ready | invoke | shutdown | dead
        self.init_start_t = time.monotonic()
        self.procs: List[_Proc] = []  # extensions
        self.runtime: Optional[_Proc] = None
        self.extensions: Dict[str, _Ext] = {}
        self.rt = _RuntimeState()
        self.invocation: Optional[_Invocation] = None
        self.telemetry_log: Deque[bytes] = collections.deque(maxlen=TELEMETRY_LOG_MAX)
        self.subscribers: List[_Subscriber] = []

    @property
    def dead(self) -> bool:
        return self.phase == "dead"

    def all_procs(self) -> List[_Proc]:
        procs = list(self.procs)
        if self.runtime is not None:
            procs.append(self.runtime)
        return procs


class _ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    allow_reuse_address = True

    def __init__(self, emulator: "Emulator") -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", 0), _ApiHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which may do a slow reverse lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("api %s: " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: List[bytes] = []
            total = 0
            for _ in range(MAX_CHUNKS):
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(100):  # trailers until the blank line
                        if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(parts)
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValueError("request body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
            raise ValueError("too many chunks")
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            self._send(_json_reply(400, "InvalidRequest", str(exc)))
            self.close_connection = True
            return
        path = urllib.parse.urlsplit(self.path).path
        try:
            reply = self.server.emulator._handle(method, path, self.headers, body)
        except Exception:  # a bug in the emulator must not kill the connection silently
            logger.exception("emulator API handler failed for %s %s", method, path)
            reply = _json_reply(500, "Emulator.InternalError", "internal emulator error")
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.body:
                self.wfile.write(reply.body)
        except OSError as exc:
            logger.debug("api client went away before the reply (%s %s): %s", self.command, self.path, exc)
            self.close_connection = True


class Emulator:
    """A local AWS Lambda sandbox: Runtime, Extensions and Telemetry APIs plus lifecycle."""

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
        self._server: Optional[_ApiServer] = None
        self._server_thread: Optional[threading.Thread] = None
        self._sandbox: Optional[_Sandbox] = None
        self._gen = 0
        self._frozen = False
        self._freezing = False
        self._outputs: Dict[str, bytearray] = {}
        self._calls: Deque[Tuple[float, str, str]] = collections.deque(maxlen=CALLS_MAX)
        self._freeze_times: List[float] = []
        self._extension_errors: List[Dict[str, Any]] = []
        self._telemetry_records: List[Dict[str, Any]] = []
        self._registrations: List[Dict[str, Any]] = []
        self.invocations: List[InvokeResult] = []
        self.shutdowns: List[ShutdownResult] = []
        self.last_init_ms: Optional[float] = None

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def api_address(self) -> str:
        """``host:port`` of the API server (the value of AWS_LAMBDA_RUNTIME_API)."""
        if self._server is None:
            raise EmulatorError("emulator not started")
        return "127.0.0.1:%d" % self._server.server_port

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
    def telemetry_records(self) -> List[Dict[str, Any]]:
        """Every platform record the emulator emitted (``{"time","type","record"}``)."""
        with self._lock:
            return list(self._telemetry_records)

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
                self._init()
                cold = True
            result = self._invoke(payload)
            result.cold_start = cold
            if cold:
                result.init_ms = self.last_init_ms
            with self._lock:
                self.invocations.append(result)
            return result

    def shutdown(self, reason: str = "spindown") -> ShutdownResult:
        """Shutdown phase: SIGTERM the runtime, SHUTDOWN to extensions, SIGKILL at the deadline."""
        with self._op_lock:
            self._check_open()
            with self._lock:
                sb = self._sandbox
            if sb is None or sb.dead:
                result = ShutdownResult(reason=reason, deadline_ms=_epoch_ms())
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

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closing:
            raise EmulatorError("emulator is closed")

    def _ensure_server(self) -> None:
        if self._server is not None:
            return
        self._server = _ApiServer(self)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="lambda-emulator-api",
            daemon=True,
        )
        self._server_thread.start()
        logger.debug("emulator API listening on %s", self.api_address)

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

    def _record_call(self, who: str, what: str) -> None:
        self._calls.append((time.monotonic(), who, what))

    def _base_env(self) -> Dict[str, str]:
        env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
        env.setdefault("PATH", _DEFAULT_PATH)
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": self.api_address,
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/%s" % self.function_name,
                "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream_name,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            }
        )
        env.update(self.env)
        return env

    def _runtime_env(self) -> Dict[str, str]:
        env = self._base_env()
        env.update(
            {
                "_HANDLER": self.handler,
                "LAMBDA_TASK_ROOT": str(self.task_root),
                "LAMBDA_RUNTIME_DIR": sys.prefix,
                "AWS_EXECUTION_ENV": "AWS_Lambda_python%d.%d" % sys.version_info[:2],
                "PYTHONPATH": str(self.task_root),
            }
        )
        if self.exec_wrapper:
            env["AWS_LAMBDA_EXEC_WRAPPER"] = self.exec_wrapper
        env.update(self.runtime_env)
        return env

    def _extension_paths(self) -> List[Path]:
        ext_dir = self.opt_dir / "extensions"
        if not ext_dir.is_dir():
            return []
        return [p for p in sorted(ext_dir.iterdir()) if p.is_file() and os.access(str(p), os.X_OK)]

    def _launch(self, name: str, kind: str, argv: List[str], cwd: Path, env: Dict[str, str]) -> _Proc:
        try:
            popen = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise EmulatorError("could not launch %s %r: %s" % (kind, argv, exc)) from exc
        proc = _Proc(name, kind, popen)
        logger.debug("launched %s %s pid=%d: %r", kind, name, proc.pid, argv)
        with self._out_lock:
            self._outputs.setdefault(name, bytearray())
        proc.reader = threading.Thread(
            target=self._read_output, args=(proc,), name="emu-out-%s" % name, daemon=True
        )
        proc.reader.start()
        proc.waiter = threading.Thread(target=self._wait_exit, args=(proc,), name="emu-wait-%s" % name, daemon=True)
        proc.waiter.start()
        return proc

    def _read_output(self, proc: _Proc) -> None:
        stream = proc.popen.stdout
        if stream is None:
            return
        # Ends at EOF: when every process of the group has exited (close() SIGKILLs the group).
        for line in iter(lambda: stream.readline(65536), b""):
            logger.debug("[%s] %s", proc.name, line.rstrip(b"\r\n").decode("utf-8", "replace"))
            with self._out_lock:
                buf = self._outputs.setdefault(proc.name, bytearray())
                buf += line
                if len(buf) > OUTPUT_LIMIT_BYTES:
                    del buf[: len(buf) - OUTPUT_LIMIT_BYTES]

    def _wait_exit(self, proc: _Proc) -> None:
        """Note the exit of ``proc`` without reaping it (WNOWAIT keeps its pid/pgid reserved)."""
        code: Optional[int] = None
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            if info is not None:
                if info.si_code == os.CLD_EXITED:
                    code = info.si_status
                else:
                    code = -info.si_status
        except ChildProcessError:
            code = proc.popen.returncode
        with self._cond:
            proc.exit_t = time.monotonic()
            proc.exit_code = code
            self._cond.notify_all()
        logger.debug("%s %s pid=%d exited with %s", proc.kind, proc.name, proc.pid, code)

    def _signal(self, proc: _Proc, sig: int) -> bool:
        """Signal the process group led by ``proc`` (only while its leader is unreaped)."""
        if proc.reaped:
            return False
        try:
            os.killpg(proc.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            logger.warning("cannot signal process group %d (%s): %s", proc.pgid, proc.name, exc)
            return False

    def _reap(self, proc: _Proc) -> None:
        """SIGKILL whatever is left of the group, then reap the leader."""
        if proc.reaped:
            return
        self._signal(proc, signal.SIGKILL)
        with self._cond:
            self._wait_until(lambda: proc.exit_t is not None, time.monotonic() + KILL_WAIT_S, ignore_closing=True)
        try:
            proc.popen.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            logger.error("%s %s pid=%d did not die after SIGKILL", proc.kind, proc.name, proc.pid)
            return
        proc.reaped = True
        if proc.reader is not None:
            proc.reader.join(timeout=1.0)
        if proc.popen.stdout is not None and (proc.reader is None or not proc.reader.is_alive()):
            proc.popen.stdout.close()

    def _crash(self, sb: _Sandbox) -> Optional[str]:
        """Description of a crashed process or errored extension in ``sb`` (lock held)."""
        for proc in sb.all_procs():
            if proc.exit_t is not None:
                return "%s %s exited with %s" % (proc.kind, proc.name, proc.exit_code)
        for ext in sb.extensions.values():
            if ext.errored:
                return "extension %s reported %s" % (ext.name, ext.errored)
        return None

    def _outputs_text(self, sb: Optional[_Sandbox], limit: int = 4000) -> str:
        names: List[str] = []
        if sb is not None:
            names = [p.name for p in sb.all_procs()]
        parts = []
        for name in names:
            text = self.output(name)
            if len(text) > limit:
                text = "...\n" + text[-limit:]
            parts.append("--- %s output ---\n%s" % (name, text.rstrip()))
        return "\n".join(parts)

    # ------------------------------------------------------------------ telemetry

    def _emit(self, sb: _Sandbox, rtype: str, record: Dict[str, Any]) -> None:
        """Emit a platform telemetry record (lock held)."""
        item = {"time": _iso_now(), "type": rtype, "record": record}
        self._telemetry_records.append(item)
        data = json.dumps(item, separators=(",", ":")).encode()
        sb.telemetry_log.append(data)
        for sub in sb.subscribers:
            if not sub.stopped and "platform" in sub.types:
                sub.enqueue(data)
        self._cond.notify_all()

    def _paused(self) -> bool:
        return self._frozen or self._freezing

    def _next_batch(self, sub: _Subscriber) -> Optional[List[bytes]]:
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

    def _delivery_loop(self, sub: _Subscriber) -> None:
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

    def _post_batch(self, sub: _Subscriber, body: bytes, count: int) -> bool:
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

    def _stop_subscribers(self, sb: _Sandbox) -> None:
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
            "types": types,
            "buffering": buffering,
            "uri": uri,
            "hostname": parts.hostname,
            "port": port,
            "path": path,
        }

    # ------------------------------------------------------------------ API dispatch

    def _handle(self, method: str, path: str, headers: Any, body: bytes) -> _Reply:
        if path.startswith(RUNTIME_PREFIX + "/"):
            if path == RUNTIME_PREFIX + "/invocation/next":
                return self._api_runtime_next() if method == "GET" else _json_reply(405, "MethodNotAllowed", path)
            match = _INVOCATION_PATH_RE.match(path)
            if match:
                if method != "POST":
                    return _json_reply(405, "MethodNotAllowed", path)
                error_type = headers.get("Lambda-Runtime-Function-Error-Type")
                return self._api_runtime_result(match.group(1), match.group(2) == "error", body, error_type)
            if path == RUNTIME_PREFIX + "/init/error":
                if method != "POST":
                    return _json_reply(405, "MethodNotAllowed", path)
                return self._api_runtime_init_error(body, headers.get("Lambda-Runtime-Function-Error-Type"))
        elif path.startswith(EXTENSION_PREFIX + "/"):
            sub = path[len(EXTENSION_PREFIX):]
            if sub == "/register" and method == "POST":
                return self._api_register(headers, body)
            if sub == "/event/next" and method == "GET":
                return self._api_extension_next(headers.get("Lambda-Extension-Identifier"))
            if sub in ("/init/error", "/exit/error") and method == "POST":
                return self._api_extension_error(sub[1:], headers, body)
            if sub in ("/register", "/event/next", "/init/error", "/exit/error"):
                return _json_reply(405, "MethodNotAllowed", path)
        elif path == TELEMETRY_PATH:
            if method != "PUT":
                return _json_reply(405, "MethodNotAllowed", path)
            return self._api_telemetry(headers.get("Lambda-Extension-Identifier"), body)
        logger.warning("emulator API: unknown endpoint %s %s", method, path)
        return _json_reply(404, "NotFound", "unknown endpoint %s %s" % (method, path))

    def _long_poll(self, sb: _Sandbox, queue: Deque[Any]) -> Optional[Any]:
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

    def _api_runtime_next(self) -> _Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "next")
            if sb is None or sb.dead:
                return _json_reply(500, "Runtime.NoSandbox", "no active sandbox")
            now = time.monotonic()
            rt = sb.rt
            if rt.first_next_t is None:
                rt.first_next_t = now
                self._emit(
                    sb,
                    "platform.initRuntimeDone",
                    {"initializationType": "on-demand", "phase": "init", "status": "success"},
                )
            if not rt.queue:
                rt.done = True
                rt.next_t = now
                self._cond.notify_all()
            inv = self._long_poll(sb, rt.queue)
            if inv is None:
                return _json_reply(500, "Runtime.SandboxGone", "sandbox is shutting down")
            rt.done = False
            headers = {
                "Content-Type": "application/json",
                "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": inv.arn,
                "Lambda-Runtime-Trace-Id": inv.trace_id,
            }
            return _Reply(200, headers, inv.payload)

    def _api_runtime_result(self, request_id: str, is_error: bool, body: bytes, error_type: Optional[str]) -> _Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "error" if is_error else "response")
            inv = sb.invocation if sb is not None else None
            if inv is None or inv.request_id != request_id:
                return _json_reply(400, "InvalidRequestID", "unknown request id %s" % request_id)
            if inv.t_response is not None or inv.finished:
                return _json_reply(400, "InvalidStateTransition", "invocation %s already finished" % request_id)
            inv.t_response = time.monotonic()
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
            self._emit(
                sb,
                "platform.runtimeDone",
                {
                    "requestId": request_id,
                    "status": inv.status,
                    "metrics": {
                        "durationMs": round((inv.t_response - inv.t_deliver) * 1000.0, 3),
                        "producedBytes": len(body),
                    },
                },
            )
            return _Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

    def _api_runtime_init_error(self, body: bytes, error_type: Optional[str]) -> _Reply:
        with self._cond:
            sb = self._sandbox
            self._record_call("runtime", "init/error")
            if sb is None or sb.phase != "init":
                return _json_reply(403, "InvalidStateTransition", "init/error outside of Init")
            try:
                parsed: Any = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                parsed = body.decode("utf-8", "replace")
            sb.rt.init_error = {"error_type": error_type, "body": parsed}
            self._cond.notify_all()
            return _Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

    def _api_register(self, headers: Any, body: bytes) -> _Reply:
        name = headers.get("Lambda-Extension-Name")
        if not name:
            return _json_reply(400, "InvalidRequest", "missing Lambda-Extension-Name header")
        try:
            req = json.loads(body.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError):
            return _json_reply(400, "InvalidRequest", "register body is not valid JSON")
        events = req.get("events") if isinstance(req, dict) else None
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            return _json_reply(400, "InvalidRequest", 'register body must be {"events": [...]}')
        bad = [e for e in events if e not in EXTENSION_EVENTS]
        if bad:
            return _json_reply(400, "InvalidEventType", "unknown event types %r" % (bad,))
        with self._cond:
            sb = self._sandbox
            self._record_call(name, "register")
            if sb is None or sb.phase != "init":
                return _json_reply(403, "Extension.InvalidRegistration", "registration is only possible during Init")
            if any(e.name == name for e in sb.extensions.values()):
                return _json_reply(409, "Extension.AlreadyRegistered", "extension %s already registered" % name)
            if name not in {p.name for p in sb.procs}:
                logger.warning(
                    "extension registered as %r, which is not the basename of any launched executable (%s); "
                    "Lambda would treat it as an internal extension",
                    name,
                    ", ".join(p.name for p in sb.procs) or "none",
                )
            ext = _Ext(ext_id=str(uuid.uuid4()), name=name, events=tuple(events), registered_t=time.monotonic())
            sb.extensions[ext.ext_id] = ext
            self._registrations.append({"name": name, "id": ext.ext_id, "events": list(events), "gen": sb.gen})
            self._cond.notify_all()
        reply = {"functionName": self.function_name, "functionVersion": FUNCTION_VERSION, "handler": self.handler}
        if "accountId" in (headers.get("Lambda-Extension-Accept-Feature") or ""):
            reply["accountId"] = ACCOUNT_ID
        return _Reply(
            200,
            {"Content-Type": "application/json", "Lambda-Extension-Identifier": ext.ext_id},
            json.dumps(reply).encode(),
        )

    def _lookup_ext(self, ext_id: Optional[str]) -> Tuple[Optional[_Sandbox], Optional[_Ext]]:
        sb = self._sandbox
        if sb is None or not ext_id:
            return sb, None
        return sb, sb.extensions.get(ext_id)

    def _api_extension_next(self, ext_id: Optional[str]) -> _Reply:
        with self._cond:
            sb, ext = self._lookup_ext(ext_id)
            if sb is None or ext is None:
                self._record_call("?", "next")
                return _json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
            self._record_call(ext.name, "next")
            if ext.errored:
                return _json_reply(403, "Extension.InvalidStateTransition", "extension already reported an error")
            if not ext.queue:
                ext.done = True
                ext.next_t = time.monotonic()
                self._cond.notify_all()
            event = self._long_poll(sb, ext.queue)
            if event is None:
                return _json_reply(500, "Extension.SandboxGone", "sandbox is shutting down")
            ext.done = False
            return _Reply(
                200,
                {"Content-Type": "application/json", "Lambda-Extension-Event-Identifier": str(uuid.uuid4())},
                event,
            )

    def _api_extension_error(self, kind: str, headers: Any, body: bytes) -> _Reply:
        with self._cond:
            sb, ext = self._lookup_ext(headers.get("Lambda-Extension-Identifier"))
            self._record_call(ext.name if ext else "?", kind)
            if sb is None or ext is None:
                return _json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
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
            return _Reply(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')

    def _api_telemetry(self, ext_id: Optional[str], body: bytes) -> _Reply:
        with self._cond:
            sb, ext = self._lookup_ext(ext_id)
            self._record_call(ext.name if ext else "?", "telemetry/subscribe")
        if not self.telemetry:
            return _json_reply(202, "Telemetry.NotSupported", "Telemetry API is not supported")
        if sb is None or ext is None:
            return _json_reply(403, "Extension.UnknownExtensionIdentifier", "unknown extension identifier")
        error, spec = self._validate_subscription(body)
        if error is not None:
            logger.warning("telemetry subscription from %s rejected: %s", ext.name, error)
            return _json_reply(400, "ValidationError", error)
        hostname = spec["hostname"]
        if hostname == "sandbox":
            logger.warning("telemetry destination host 'sandbox' may resolve elsewhere in a VPC; use sandbox.localdomain")
        elif hostname not in TELEMETRY_SANDBOX_HOSTS and not hostname.startswith("127."):
            # a loopback listener is how local runs avoid binding 0.0.0.0; anything else is suspicious
            logger.warning("telemetry destination host %r is not sandbox.localdomain", hostname)
        host = "127.0.0.1" if hostname in TELEMETRY_SANDBOX_HOSTS else hostname
        sub = _Subscriber(ext.ext_id, ext.name, spec["types"], spec["buffering"], spec["uri"], host, spec["port"], spec["path"])
        old: Optional[_Subscriber] = None
        with self._cond:
            if sb.phase != "init":
                logger.warning("extension %s subscribed to telemetry outside of Init (phase %s)", ext.name, sb.phase)
            if sb.dead or self._sandbox is not sb:
                return _json_reply(403, "Extension.SandboxGone", "sandbox is shutting down")
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
        return _Reply(200, {"Content-Type": "text/plain"}, b"OK")

    # ------------------------------------------------------------------ lifecycle

    def _init(self) -> None:
        """Init phase: launch and register extensions, start the runtime, wait for every next."""
        with self._cond:
            self._gen += 1
            sb = _Sandbox(self._gen)
            self._sandbox = sb
            self._frozen = False
            self._emit(
                sb,
                "platform.initStart",
                {
                    "initializationType": "on-demand",
                    "phase": "init",
                    "runtimeVersion": "python:%d.%d.emulated" % sys.version_info[:2],
                    "functionName": self.function_name,
                    "functionVersion": FUNCTION_VERSION,
                },
            )
        deadline = sb.init_start_t + self.init_timeout_s
        try:
            ext_env = self._base_env()
            for path in self._extension_paths():
                proc = self._launch(path.name, "extension", [str(path)], self.opt_dir, ext_env)
                with self._cond:
                    sb.procs.append(proc)
            with self._cond:
                expected = len(sb.procs)
                ok = self._wait_until(
                    lambda: len(sb.extensions) >= expected or self._crash(sb) is not None, deadline
                )
                crash = self._crash(sb)
                if crash is not None:
                    raise EmulatorError("Init failed before the runtime started: %s" % crash)
                if not ok:
                    raise EmulatorError(
                        "Init timed out after %.1fs: %d of %d extensions registered"
                        % (self.init_timeout_s, len(sb.extensions), expected)
                    )
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
                if sb.rt.init_error is not None:
                    raise EmulatorError("runtime reported an Init error: %r" % (sb.rt.init_error,))
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
                self._emit(
                    sb,
                    "platform.initReport",
                    {
                        "initializationType": "on-demand",
                        "phase": "init",
                        "status": "success",
                        "metrics": {"durationMs": round(init_ms, 3)},
                    },
                )
                sb.phase = "ready"
            logger.debug("Init done in %.1f ms (%d extensions)", init_ms, len(sb.extensions))
        except BaseException as exc:
            self._kill_sandbox(sb)
            if isinstance(exc, EmulatorError):
                raise EmulatorError("%s\n%s" % (exc, self._outputs_text(sb))) from None
            raise
        self._freeze()

    def _freeze(self) -> Optional[float]:
        """SIGSTOP every process group of the sandbox (no-op when freezing is disabled)."""
        if not self.freeze_enabled:
            return None
        with self._cond:
            sb = self._sandbox
            if sb is None or sb.dead:
                return None
            self._freezing = True
            try:
                # Let a telemetry POST already on the wire finish (bounded) instead of freezing it mid-flight.
                self._wait_until(
                    lambda: not any(s.inflight for s in sb.subscribers),
                    time.monotonic() + FREEZE_INFLIGHT_WAIT_S,
                )
                procs = [p for p in sb.all_procs() if p.alive]
                for proc in procs:
                    self._signal(proc, signal.SIGSTOP)
                self._frozen = True
            finally:
                self._freezing = False
            freeze_t = time.monotonic()
            self._freeze_times.append(freeze_t)
            self._cond.notify_all()
        # Confirm the leaders are stopped so callers observe a frozen sandbox (bounded).
        confirm_deadline = time.monotonic() + FREEZE_CONFIRM_S
        for _ in range(1000):
            if all(_proc_state(p.pid) in ("T", "t", "Z", None) for p in procs) or time.monotonic() > confirm_deadline:
                break
            time.sleep(0.0005)
        logger.debug("sandbox frozen (%d process groups)", len(procs))
        return freeze_t

    def _thaw(self) -> None:
        with self._cond:
            sb = self._sandbox
            if not self._frozen:
                return
            if sb is not None:
                for proc in sb.all_procs():
                    self._signal(proc, signal.SIGCONT)
            self._frozen = False
            self._cond.notify_all()
        logger.debug("sandbox thawed")

    def _invoke(self, payload: Union[Dict[str, Any], bytes, None]) -> InvokeResult:
        with self._lock:
            sb = self._sandbox
        assert sb is not None
        if isinstance(payload, (bytes, bytearray)):
            body = bytes(payload)
        else:
            body = json.dumps(payload if payload is not None else {}).encode()
        self._thaw()
        request_id = str(uuid.uuid4())
        start_mono = time.monotonic()
        deadline_ms = _epoch_ms() + int(self.timeout_s * 1000)
        deadline_mono = start_mono + self.timeout_s
        trace_id = "Root=1-%08x-%s;Parent=%s;Sampled=0" % (int(time.time()), uuid.uuid4().hex[:24], uuid.uuid4().hex[:16])
        invoke_exts: List[_Ext] = []
        with self._cond:
            sb.phase = "invoke"
            inv = _Invocation(
                request_id=request_id,
                payload=body,
                deadline_ms=deadline_ms,
                deadline_mono=deadline_mono,
                trace_id=trace_id,
                arn=self.function_arn,
                t_deliver=time.monotonic(),
            )
            sb.invocation = inv
            self._emit(sb, "platform.start", {"requestId": request_id, "version": FUNCTION_VERSION})
            sb.rt.done = False
            sb.rt.queue.append(inv)
            event = json.dumps(
                {
                    "eventType": "INVOKE",
                    "deadlineMs": deadline_ms,
                    "requestId": request_id,
                    "invokedFunctionArn": self.function_arn,
                    "tracing": {"type": "X-Amzn-Trace-Id", "value": trace_id},
                }
            ).encode()
            for ext in sb.extensions.values():
                if "INVOKE" in ext.events and not ext.errored:
                    ext.done = False
                    ext.queue.append(event)
                    invoke_exts.append(ext)
            self._cond.notify_all()

            # 1. wait for the runtime's response (or error), a crash, or the deadline
            self._wait_until(lambda: inv.t_response is not None or self._crash(sb) is not None, deadline_mono)
            crash = self._crash(sb)
            status: str
            reset_reason: Optional[str] = None
            if inv.t_response is None:
                if crash is not None:
                    status, reset_reason = "error", "failure"
                    inv.error_type = "Runtime.ExitError" if "runtime" in crash else "Extension.Crash"
                else:
                    status, reset_reason = "timeout", "timeout"
                    inv.error_type = "Sandbox.Timedout"
                    self._emit(
                        sb,
                        "platform.runtimeDone",
                        {
                            "requestId": request_id,
                            "status": "timeout",
                            "metrics": {"durationMs": round((time.monotonic() - inv.t_deliver) * 1000.0, 3)},
                        },
                    )
            else:
                # 2. wait for the runtime and every INVOKE extension to call next again
                self._wait_until(
                    lambda: (sb.rt.done and all(e.done for e in invoke_exts)) or self._crash(sb) is not None,
                    deadline_mono,
                )
                crash = self._crash(sb)
                all_done = sb.rt.done and all(e.done for e in invoke_exts)
                if crash is not None:
                    status, reset_reason = "error", "failure"
                    inv.error_type = "Runtime.ExitError" if "runtime" in crash else "Extension.Crash"
                elif not all_done:
                    status, reset_reason = "timeout", "timeout"
                    inv.error_type = "Sandbox.Timedout"
                else:
                    status = inv.status or "success"
            if crash is not None:
                logger.warning("invocation %s: %s", request_id, crash)
            inv.finished = True
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
            before_deadline = {e.name: bool(e.done and e.next_t is not None and e.next_t <= deadline_mono) for e in invoke_exts}
            duration_ms = (finish_t - inv.t_deliver) * 1000.0
            hwm_kib = sum(_proc_hwm_kib(p.pid) for p in sb.all_procs() if p.alive)
            self._emit(
                sb,
                "platform.report",
                {
                    "requestId": request_id,
                    "status": status,
                    "metrics": {
                        "durationMs": round(duration_ms, 3),
                        "billedDurationMs": int(math.ceil(duration_ms)),
                        "memorySizeMB": self.memory_mb,
                        "maxMemoryUsedMB": int(math.ceil(hwm_kib / 1024.0)),
                    },
                },
            )
            if reset_reason is None:
                sb.phase = "ready"

        result = InvokeResult(
            request_id=request_id,
            status=status,
            response=inv.response,
            deadline_ms=deadline_ms,
            runtime_ms=runtime_ms,
            post_runtime_ms=post_runtime_ms,
            extension_next_ms=ext_next_ms,
            extensions_before_deadline=before_deadline,
            freeze_t=None,
            reset=reset_reason is not None,
            error_type=inv.error_type,
            duration_ms=duration_ms,
        )
        if reset_reason is not None:
            logger.info("invocation %s ended with %s: resetting the sandbox (%s)", request_id, status, reset_reason)
            result.shutdown = self._shutdown_sandbox(sb, reset_reason)
            with self._lock:
                self.shutdowns.append(result.shutdown)
        else:
            result.freeze_t = self._freeze()
        return result

    def _shutdown_sandbox(self, sb: _Sandbox, reason: str) -> ShutdownResult:
        """Shutdown phase of ``sb``; leaves it dead (the next invoke re-inits)."""
        start = time.monotonic()
        deadline_mono = start + self.shutdown_window_ms / 1000.0
        deadline_ms = _epoch_ms() + self.shutdown_window_ms
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

    def _kill_sandbox(self, sb: _Sandbox) -> None:
        """SIGKILL and reap every process group of ``sb``, stop its telemetry, mark it dead."""
        with self._cond:
            procs = sb.all_procs()
            sb.phase = "dead"
            if self._sandbox is sb:
                self._frozen = False
            self._cond.notify_all()
        for proc in procs:
            self._signal(proc, signal.SIGKILL)
        for proc in procs:
            self._reap(proc)
        self._stop_subscribers(sb)


# ---------------------------------------------------------------------- command line


def _parse_kv(items: Optional[List[str]], parser: argparse.ArgumentParser, flag: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error("%s expects KEY=VALUE, got %r" % (flag, item))
        out[key] = value
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, float):
        return round(obj, 3)
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.emulator",
        description="Run a Lambda function with its extensions in a local emulated sandbox and print timings.",
    )
    parser.add_argument("--opt", required=True, type=Path, help="directory standing in for /opt (extensions/ inside)")
    parser.add_argument("--task-root", required=True, type=Path, help="directory standing in for /var/task")
    parser.add_argument("--handler", default="app.handler")
    parser.add_argument("--invocations", type=int, default=3)
    parser.add_argument("--freeze-s", type=float, default=1.0, help="frozen time between invocations")
    parser.add_argument("--env", action="append", metavar="K=V", help="function environment (runtime and extensions)")
    parser.add_argument("--runtime-env", action="append", metavar="K=V", help="extra environment of the runtime only")
    parser.add_argument("--no-telemetry", action="store_true", help="answer Telemetry API subscriptions with 202 NotSupported")
    parser.add_argument("--no-freeze", action="store_true", help="do not SIGSTOP the sandbox between invocations")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="function timeout")
    parser.add_argument("--memory-mb", type=int, default=128)
    parser.add_argument("--shutdown-window-ms", type=int, default=2000)
    parser.add_argument("--function-name", default="emulated-function")
    parser.add_argument("--exec-wrapper", default=None)
    parser.add_argument("--payload", default="{}", help="JSON event for every invocation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (process output included) on stderr")
    args = parser.parse_args(argv)
    if args.invocations < 0:
        parser.error("--invocations must be >= 0")
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        parser.error("--payload is not JSON: %s" % exc)
    env = _parse_kv(args.env, parser, "--env")
    runtime_env = _parse_kv(args.runtime_env, parser, "--runtime-env")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )

    summary: Dict[str, Any] = {"invocations": [], "shutdown": None}
    ok = True
    with Emulator(
        opt_dir=args.opt,
        runtime_cmd=None,
        task_root=args.task_root,
        handler=args.handler,
        env=env,
        runtime_env=runtime_env,
        function_name=args.function_name,
        timeout_s=args.timeout_s,
        memory_mb=args.memory_mb,
        freeze=not args.no_freeze,
        telemetry=not args.no_telemetry,
        shutdown_window_ms=args.shutdown_window_ms,
        exec_wrapper=args.exec_wrapper,
    ) as emu:
        try:
            emu.start()
            summary["init_ms"] = emu.last_init_ms
            for index in range(args.invocations):
                if index:
                    emu.wait_frozen_for(args.freeze_s)
                res = emu.invoke(payload)
                ok = ok and res.status == "success"
                summary["invocations"].append(res)
            shutdown = emu.shutdown()
            summary["shutdown"] = shutdown
            ok = ok and not shutdown.killed and all(c == 0 for c in shutdown.exit_codes.values())
        except EmulatorError as exc:
            summary["error"] = str(exc)
            ok = False
        summary["extension_errors"] = emu.extension_errors
    summary["ok"] = ok
    print(json.dumps(_jsonable(summary), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
