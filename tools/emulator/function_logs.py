"""Telemetry ``function`` records from the runtime's output, as Lambda makes them.

Two sources, both read by the emulator as the runtime writes them:

- the runtime's stdout and stderr (one pipe): each line is one record, a string (``print``);
  on Managed Instances each forked worker gets its own output stream instead, as on Lambda:
  the runtime finds a Unix socket in ``_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`` and each worker
  connects its stdout and its stderr to it (one connection each), so the lines of overlapping
  workers never interleave (on one shared pipe a ``print``, written as text then newline, could
  take another worker's JSON log line into its own line);
- the telemetry log pipe Lambda hands the runtime as ``_LAMBDA_TELEMETRY_LOG_FD``: awslambdaric
  writes each ``logging`` record there as one frame (type 0xa55a00XX, length, microsecond time,
  message), so a multi-line record (a traceback) stays one record: text frames (odd type) give a
  string record, JSON frames (even type, ``AWS_LAMBDA_LOG_FORMAT=JSON``) the decoded object.

Records go to the subscribers of ``function`` events in order with the platform records: when the
runtime answers a request (and before a ``platform.runtimeDone`` of an unanswered one) the emulator
waits (briefly) until what both pipes held at that moment is read and queued
(``_sync_function_logs``), since the runtime wrote its lines before answering. The wait is for
those bytes only, not for an empty pipe: on Managed Instances several workers share both pipes
and keep writing while one of them answers, and their lines must not hold its answer up.
"""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import select
import shutil
import socket
import struct
import tempfile
import termios
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from tools.emulator.base import EmulatorBase
from tools.emulator.state import Sandbox

logger = logging.getLogger(__name__)

TELEMETRY_FD_ENV = "_LAMBDA_TELEMETRY_LOG_FD"
FD_PROVIDER_ENV = "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET"  # Managed Instances: per-worker output
MAX_WORKER_STREAMS = 256  # accepted output connections (two per worker)
FRAME_HEADER = struct.Struct(">IIQ")  # type, length, timestamp (µs)
FRAME_MAGIC = 0xA55A0000
MAX_FRAME_BYTES = 1024 * 1024  # Lambda cuts a record at 256 KiB; more is a broken stream
MAX_RECORD_CHARS = 262144
SYNC_WAIT_S = 1.0
MAX_READS = 100_000_000


def iso_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".%03dZ" % (int(epoch * 1000) % 1000)


class LogPipe:
    """One pipe the emulator reads: its fd and whether a read is being turned into records."""

    def __init__(self, fd: int, owned: bool = True) -> None:
        self.fd = fd
        self.owned = owned  # closed by its reader at EOF (not the runtime's Popen stdout)
        self.busy = False
        self.closed = False
        self.emitted = 0  # bytes read and turned into records (changed with the lock held)

    def unread(self) -> int:
        """Bytes in the pipe not read yet (0 once closed)."""
        if self.closed:
            return 0
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, buf, True)
        except OSError:
            return 0
        return buf[0]


class LogSources:
    """What a runtime about to start gets for its logs: the frames pipe's read end and, on Managed
    Instances, the listening socket its workers connect their output to (and its directory)."""

    def __init__(self, frames_fd: int, provider: Optional[socket.socket] = None,
                 provider_dir: Optional[str] = None) -> None:
        self.frames_fd = frames_fd
        self.provider = provider
        self.provider_dir = provider_dir

    def close_provider(self) -> None:
        if self.provider is not None:
            self.provider.close()
        if self.provider_dir is not None:
            shutil.rmtree(self.provider_dir, ignore_errors=True)

    def close(self) -> None:
        os.close(self.frames_fd)
        self.close_provider()


class RuntimeLogs:
    """The runtime's log pipes: its output, its frames, and (Managed Instances) its workers' streams."""

    def __init__(self, output_fd: int, frames_fd: int, on_line: Callable[[bytes], None],
                 provider: Optional[socket.socket] = None) -> None:
        self.pipes = [LogPipe(output_fd, owned=False), LogPipe(frames_fd)]
        self.on_line = on_line  # each line of the output streams (the runtime's kept output)
        self.provider = provider

    def marks(self) -> Optional[List[int]]:
        """Per pipe, the ``emitted`` count at which all it holds now is emitted (lock held);
        None while a read is being turned into records (its bytes are then counted nowhere)."""
        if any(p.busy for p in self.pipes):
            return None
        return [p.emitted + p.unread() for p in self.pipes]

    def reached(self, marks: List[int]) -> bool:
        return all(p.closed or p.emitted >= mark for p, mark in zip(self.pipes, marks))


class FunctionLogs(EmulatorBase):
    """Reads the runtime's output into ``function`` telemetry records."""

    def _runtime_log_sources(self, env: Dict[str, str]) -> LogSources:
        """Make the log sources of a runtime about to start: the framed-log pipe, whose write end
        goes in ``env`` (and must be passed to the process), and on Managed Instances the socket
        its workers connect their output to (its path in ``env``)."""
        read_fd, write_fd = os.pipe()
        env[TELEMETRY_FD_ENV] = str(write_fd)
        sources = LogSources(read_fd)
        if self.managed:
            try:
                sources.provider_dir = tempfile.mkdtemp(prefix="emu-lmi-")
                path = os.path.join(sources.provider_dir, "logs.sock")
                sources.provider = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sources.provider.bind(path)
                sources.provider.listen(MAX_WORKER_STREAMS)
                sources.provider.setblocking(False)
            except OSError:
                os.close(write_fd)
                sources.close()
                raise
            env[FD_PROVIDER_ENV] = path
        return sources

    def _start_runtime_logs(self, proc: Any, sources: LogSources, on_line: Callable[[bytes], None]) -> None:
        """Read the runtime's output pipe (each line also to ``on_line``; its thread is ``proc.reader``),
        its frames pipe and its workers' output streams; ``proc.logs`` tells how far all are read."""
        assert proc.popen.stdout is not None
        proc.logs = logs = RuntimeLogs(proc.popen.stdout.fileno(), sources.frames_fd, on_line, sources.provider)
        readers = ((logs.pipes[0], self._lines_of, on_line), (logs.pipes[1], self._frames_of, None))
        for pipe, split, each in readers:
            thread = threading.Thread(target=self._read_pipe, args=(pipe, split, each), daemon=True,
                                      name="emu-out-runtime" if each else "emu-frames-runtime")
            if each is not None:
                proc.reader = thread
            thread.start()
        if sources.provider is not None:
            threading.Thread(target=self._accept_worker_streams, args=(logs, sources), daemon=True,
                             name="emu-lmi-streams").start()

    def _accept_worker_streams(self, logs: RuntimeLogs, sources: LogSources) -> None:
        """Accept the workers' output connections until the runtime's own output ends."""
        assert sources.provider is not None
        poller = select.poll()
        poller.register(sources.provider.fileno(), select.POLLIN)
        try:
            for _ in range(MAX_READS):
                if logs.pipes[0].closed or len(logs.pipes) >= 2 + MAX_WORKER_STREAMS:
                    break  # the runtime is gone, or a runaway: more connections are refused
                if poller.poll(200):
                    with self._cond:
                        self._accept_pending(logs)
        finally:
            with self._cond:
                logs.provider = None
                sources.close_provider()

    def _accept_pending(self, logs: RuntimeLogs) -> None:
        """Take the workers' output connections made so far (lock held), each read as its own stream
        of lines: a worker connects before it writes anything, so a sync sees all its output."""
        if logs.provider is None:
            return
        for _ in range(MAX_WORKER_STREAMS):
            if len(logs.pipes) >= 2 + MAX_WORKER_STREAMS:
                return
            try:
                conn, _addr = logs.provider.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("runtime output socket: accept failed: %s", exc)
                return
            conn.setblocking(True)
            pipe = LogPipe(conn.detach())
            logs.pipes.append(pipe)
            threading.Thread(target=self._read_pipe, args=(pipe, self._lines_of, logs.on_line), daemon=True,
                             name="emu-out-worker").start()

    def _read_pipe(self, pipe: LogPipe, split: Callable[[bytearray, bool], List[Any]],
                   each: Optional[Callable[[bytes], None]]) -> None:
        poller = select.poll()
        poller.register(pipe.fd, select.POLLIN | select.POLLHUP)
        pending = bytearray()
        for _ in range(MAX_READS):
            if not poller.poll(1000):
                continue  # nothing to read: a read now would block while marked busy
            with self._cond:
                pipe.busy = True  # before reading: a sync never sees the bytes gone but not emitted
            try:
                chunk = os.read(pipe.fd, 65536)
            except OSError:
                chunk = b""
            pending += chunk
            records = split(pending, not chunk)
            if each is not None:
                for _stamp, raw in records:
                    each(raw)
            with self._cond:
                sb = self._sandbox
                if sb is not None and not sb.dead:
                    for stamp, raw in records:
                        self._emit_function(sb, stamp, raw)
                pipe.emitted += len(chunk)
                pipe.busy = False
                if not chunk:
                    pipe.closed = True
                self._cond.notify_all()
            if not chunk:
                break
        if pipe.owned:
            os.close(pipe.fd)  # the output pipe belongs to its Popen

    @staticmethod
    def _lines_of(pending: bytearray, eof: bool) -> List[Any]:
        out = []
        for _ in range(MAX_READS):
            nl = pending.find(b"\n")
            if nl < 0:
                break
            out.append((time.time(), bytes(pending[:nl + 1])))
            del pending[:nl + 1]
        if eof and pending:
            out.append((time.time(), bytes(pending)))
            del pending[:]
        return out

    @staticmethod
    def _frames_of(pending: bytearray, eof: bool) -> List[Any]:
        out = []
        for _ in range(MAX_READS):
            if len(pending) < FRAME_HEADER.size:
                break
            ftype, length, micros = FRAME_HEADER.unpack_from(pending)
            if ftype & 0xFFFF0000 != FRAME_MAGIC or length > MAX_FRAME_BYTES:
                logger.warning("runtime telemetry log pipe: bad frame header %08x, dropping %d bytes", ftype,
                               len(pending))
                del pending[:]
                break
            if len(pending) < FRAME_HEADER.size + length:
                break
            message = bytes(pending[FRAME_HEADER.size:FRAME_HEADER.size + length])
            del pending[:FRAME_HEADER.size + length]
            out.append((micros / 1e6, (ftype, message)))
        return out

    def _emit_function(self, sb: Sandbox, stamp: float, raw: Any) -> None:
        """One ``function`` record to the subscribers of function events (lock held)."""
        subs = [sub for sub in sb.subscribers if not sub.stopped and "function" in sub.types]
        if not subs:
            return
        record: Any
        if isinstance(raw, tuple):  # a frame
            ftype, message = raw
            text = message.decode("utf-8", "replace")
            record = text
            if ftype % 2 == 0:  # a JSON frame: Lambda sends the object
                try:
                    record = json.loads(text)
                except ValueError:
                    record = text
        else:
            record = raw.decode("utf-8", "replace")
        if isinstance(record, str):
            record = record[:MAX_RECORD_CHARS]
        data = json.dumps({"time": iso_time(stamp), "type": "function", "record": record},
                          separators=(",", ":")).encode()
        for sub in subs:
            sub.enqueue(data)

    def _sync_function_logs(self, sb: Sandbox) -> None:
        """Wait (lock held but released while waiting, bounded) until what the runtime's log pipes
        hold now is read and its records queued, so a platform record emitted next follows them, as
        in Lambda's stream. Bytes written meanwhile (other workers) are not waited for."""
        rt = sb.runtime
        logs = getattr(rt, "logs", None) if rt is not None else None
        if logs is None or not any(not s.stopped and "function" in s.types for s in sb.subscribers):
            return
        self._accept_pending(logs)  # a worker that connected but is not read yet has written nothing else
        marks: List[List[int]] = []

        def caught_up() -> bool:
            if not marks:
                now = logs.marks()
                if now is None:
                    return False
                marks.append(now)
            return logs.reached(marks[0])

        self._wait_until(caught_up, time.monotonic() + SYNC_WAIT_S)
