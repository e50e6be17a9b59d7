"""Sandbox and process control: the processes' environment, launching every extension and the
runtime in its own session, capturing their output, noting exits without reaping, signalling
process groups, freezing (SIGSTOP) and thawing (SIGCONT) the sandbox, and killing and reaping it.

Only processes this emulator started are ever signalled: each one is launched in a new session
(``start_new_session=True``) and signalled through ``os.killpg`` on the process group it leads.
A group leader is never reaped before its group has been SIGKILLed, so the group id cannot be
reused by an unrelated process meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from tools import procfs
from tools.emulator.function_logs import TELEMETRY_FD_ENV, FunctionLogs, RuntimeLogs
from tools.emulator.state import FUNCTION_VERSION, REGION, EmulatorError, Sandbox

logger = logging.getLogger(__name__)

OUTPUT_LIMIT_BYTES = 2 * 1024 * 1024
KILL_WAIT_S = 2.0
FREEZE_INFLIGHT_WAIT_S = 0.25
FREEZE_CONFIRM_S = 0.2

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class Proc:
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
        self.logs: Optional[RuntimeLogs] = None  # the runtime's: its log pipes (function_logs.py)
        self.waiter: Optional[threading.Thread] = None

    @property
    def alive(self) -> bool:
        return self.exit_t is None



class ProcessControl(FunctionLogs):
    """Launch, watch, signal, freeze/thaw and reap the processes of the sandbox."""

    def _base_env(self) -> Dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
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
                "AWS_LAMBDA_INITIALIZATION_TYPE": self.init_type,
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
        if self.managed:
            env["AWS_LAMBDA_MAX_CONCURRENCY"] = str(self.max_concurrency)  # awslambdaric forks that many workers
        env.update(self.runtime_env)
        return env

    def _extension_paths(self) -> List[Path]:
        ext_dir = self.opt_dir / "extensions"
        if not ext_dir.is_dir():
            return []
        return [p for p in sorted(ext_dir.iterdir()) if p.is_file() and os.access(str(p), os.X_OK)]

    def _launch(self, name: str, kind: str, argv: List[str], cwd: Path, env: Dict[str, str]) -> Proc:
        # The runtime also gets Lambda's telemetry log pipe and, on Managed Instances, the socket
        # its workers connect their output to (function_logs.py).
        sources = self._runtime_log_sources(env) if kind == "runtime" else None
        pass_fds = (int(env[TELEMETRY_FD_ENV]),) if sources is not None else ()
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
                preexec_fn=self.preexec,
                pass_fds=pass_fds,
            )
        except OSError as exc:
            if sources is not None:
                sources.close()
            raise EmulatorError("could not launch %s %r: %s" % (kind, argv, exc)) from exc
        finally:
            for fd in pass_fds:
                os.close(fd)  # the runtime's end
        proc = Proc(name, kind, popen)
        logger.debug("launched %s %s pid=%d: %r", kind, name, proc.pid, argv)
        with self._out_lock:
            self._outputs.setdefault(name, bytearray())
        if sources is not None:
            self._start_runtime_logs(proc, sources, lambda line: self._keep_output(proc, line))
        else:
            proc.reader = threading.Thread(
                target=self._read_output, args=(proc,), name="emu-out-%s" % name, daemon=True
            )
            proc.reader.start()
        proc.waiter = threading.Thread(target=self._wait_exit, args=(proc,), name="emu-wait-%s" % name, daemon=True)
        proc.waiter.start()
        return proc

    def _read_output(self, proc: Proc) -> None:
        stream = proc.popen.stdout
        if stream is None:
            return
        # Ends at EOF: when every process of the group has exited (close() SIGKILLs the group).
        for line in iter(lambda: stream.readline(65536), b""):
            self._keep_output(proc, line)

    def _keep_output(self, proc: Proc, line: bytes) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # every output line comes here: decode it only to log it
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            # the extension prefixes its own lines with "[name]" already: do not prefix them twice
            logger.debug("%s", text if text.startswith("[%s]" % proc.name) else "[%s] %s" % (proc.name, text))
        with self._out_lock:
            buf = self._outputs.setdefault(proc.name, bytearray())
            buf += line
            if len(buf) > OUTPUT_LIMIT_BYTES:
                del buf[: len(buf) - OUTPUT_LIMIT_BYTES]

    def _wait_exit(self, proc: Proc) -> None:
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

    def _signal(self, proc: Proc, sig: int) -> bool:
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

    def _reap(self, proc: Proc) -> None:
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

    def _crash(self, sb: Sandbox) -> Optional[str]:
        """Description of a crashed process or errored extension in ``sb`` (lock held)."""
        for proc in sb.all_procs():
            if proc.exit_t is not None:
                return "%s %s exited with %s" % (proc.kind, proc.name, proc.exit_code)
        for ext in sb.extensions.values():
            if ext.errored:
                return "extension %s reported %s" % (ext.name, ext.errored)
        return None

    def _outputs_text(self, sb: Optional[Sandbox], limit: int = 4000) -> str:
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
            if all(procfs.state(p.pid) in ("T", "t", "Z", None) for p in procs) or time.monotonic() > confirm_deadline:
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

    def _kill_sandbox(self, sb: Sandbox) -> None:
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

