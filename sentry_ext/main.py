"""Lifecycle on the main thread: record for the exec wrapper, register, start the pipeline, loop
on /event/next.

Start-up budget: only light modules load before the first ``/event/next`` (this one, config,
protocol/dsn, delivery/flush, awslambda/handshake, exec_model, extensions_api and telemetry_address,
util/logs and http_numbers, and socket, signal and threading from the stdlib); no typing, dataclasses, json or
http.client there. What each of those choices saves is measured in tools/BENCHMARKS.md
(*Optimisations, each measured*). The pipeline (urllib3, ssl, http.server) loads on a background
thread once that ``/event/next`` is on the wire.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from . import __version__
from .awslambda import exec_model, handshake, telemetry_address
from .util import logs
from .config import Config, load
from .delivery.flush import BACKGROUND, FlushControl, FlushDecision
from .awslambda.extensions_api import LambdaApi, LambdaApiError, event_deadline

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

    from .pipeline import Pipeline  # loaded on the init thread, after the first /event/next

log = logs.get(__name__)  # imports logging at its first use

SIGNAL_DRAIN_S = 1.5  # drain budget after SIGTERM/SIGINT, inside Lambda's 2 s shutdown window
POLL_BACKOFF_CAP_S = 1.0
FATAL_POLLS = 5  # consecutive fatal /event/next answers (4xx, 500) before the loop gives up
READY_WAIT_S = 5.0
TELEMETRY_GRACE_S = 3.0  # platform.start must arrive within this of INVOKE, or telemetry is broken
RESTORE_READY_WAIT_S = 1.0  # a pipeline not started by then handles the restore when it has


class StopSignal(BaseException):
    """Raised from the signal handler into a blocking ``/event/next`` (``except Exception`` can't eat it)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind and listen now, so the port is ours and early connections wait in the backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class Extension:
    """One extension process: lifecycle loop plus the pipeline started beside it."""

    def __init__(self, cfg: Config, name: str, api: Optional[LambdaApi] = None) -> None:
        self.cfg = cfg
        self.name = name
        self.api = api or LambdaApi(cfg.runtime_api)
        self.pipeline: Optional[Pipeline] = None
        self.ready = threading.Event()
        # The INVOKE last seen, and the pipeline told of each INVOKE from now on: an INVOKE that comes
        # while the pipeline still loads is handed over when it is built, before its ingest starts,
        # so the SDK's first envelopes are bound to their request in every flush mode.
        self._invoke_lock = threading.Lock()
        self._last_invoke: Optional[Dict[str, Any]] = None
        self._invoke_sink: Optional[Pipeline] = None
        self.flush_control = FlushControl.from_config(cfg)  # the one flush mode, shared with the pipeline
        self._polling = False
        self._in_next = False  # waiting in /event/next (see _waiting_in_next)
        self._signal: Optional[int] = None
        self._first_poll_sent = threading.Event()
        self._registered_ms: Optional[float] = None
        self._inert_reason = ""
        self._record_error: Optional[str] = None
        self.restore_watch = exec_model.RestoreWatch(cfg.init_type)
        self._restored: Optional[str] = None  # why the sandbox was last restored from a snapshot
        self.telemetry_path: Optional[str] = None  # the secret path Lambda posts telemetry to
        self._telemetry_note = ""  # how the telemetry listener was bound, logged at debug level

    # -- start-up ------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SHUTDOWN or a signal; returns the process exit code."""
        started = time.monotonic()
        ingest_sock = self._claim()  # before /register: the runtime, and its exec wrapper, start after it
        try:
            # no json before the first /event/next; SHUTDOWN only on Managed Instances (INVOKE is refused there)
            self.api.register(self.name, exec_model.register_events(self.cfg.init_type), parse=False)
        except LambdaApiError as exc:
            if ingest_sock is not None:
                ingest_sock.close()
                handshake.record(self.cfg.state_file, handshake.INERT)
            log.error("could not register with the Extensions API: %s", exc)
            return 1
        self._registered_ms = (time.monotonic() - started) * 1000
        self._install_signals()
        self._prepare(ingest_sock)
        return self._loop()

    def _claim(self) -> Optional[socket.socket]:
        """Decide whether this extension will relay (valid settings, dependencies there, port bound)
        and record it for the exec wrapper; returns the bound ingest socket, or None when inert."""
        cfg = self.cfg
        sock = None
        missing = handshake.missing_dependency() if cfg.active else None
        if not cfg.active:
            self._inert_reason = str(cfg.problem or "SENTRY_DSN is not set")
        elif missing is not None:
            self._inert_reason = "%s is not on the path of %s (run from the layer, or install it there)" % (
                missing, sys.executable)
        else:
            try:
                sock = bind_listener(cfg.host, cfg.port)
            except OSError as exc:
                self._inert_reason = "cannot listen on %s:%d (%s); set SENTRY_EXT_PORT to a free port" % (
                    cfg.host, cfg.port, exc)
        self._record_error = handshake.record(cfg.state_file, handshake.ACTIVE if sock else handshake.INERT,
                                              cfg.port)
        return sock

    def _announce(self) -> None:
        """Log the registration (deferred off the start-up path; once)."""
        if self._registered_ms is None:
            return
        ms, self._registered_ms = self._registered_ms, None
        info = self.api.function_info()
        log.info("registered %s %s for %s (%.1f ms after start)", self.name, __version__,
                 info.get("functionName", "?"), ms)

    def _prepare(self, ingest_sock: Optional[socket.socket]) -> None:
        cfg = self.cfg
        for warning in cfg.warnings:
            self._announce()
            log.warning("%s", warning)
        if self._record_error is not None:
            self._announce()
            log.warning("cannot write %s (%s): the exec wrapper leaves the SDK sending straight to Sentry",
                        cfg.state_file, self._record_error)
        if ingest_sock is None:
            self._announce()
            log.error("inert: %s; the function runs normally, nothing is relayed to Sentry", self._inert_reason)
            self.ready.set()
            return
        telemetry_sock = self._subscribe_telemetry()  # every mode: failure events come from it
        threading.Thread(target=self._start_pipeline, args=(ingest_sock, telemetry_sock),
                         name="sentry-ext-init", daemon=True).start()

    def _subscribe_telemetry(self) -> Optional[socket.socket]:
        """Bind the listener (see telemetry_address) and subscribe it on a fresh secret path."""
        cfg = self.cfg
        try:
            sock, self._telemetry_note = telemetry_address.bind(cfg.telemetry_host, cfg.telemetry_port, bind_listener)
        except OSError as exc:
            self._fallback("cannot listen on port %d for telemetry (%s)" % (cfg.telemetry_port, exc))
            return None
        self.telemetry_path = telemetry_address.new_path()
        try:
            status, body = self.api.subscribe_telemetry(cfg.telemetry_host, cfg.telemetry_port, self.telemetry_path,
                                                        exec_model.telemetry_schema(cfg.init_type), cfg.telemetry_types)
        except LambdaApiError as exc:
            sock.close()
            self._fallback("Telemetry API subscription failed (%s)" % exc)
            return None
        if status != 200:
            sock.close()
            self._fallback("Telemetry API answered %d %s" % (status, str(body)[:120]))
            return None
        return sock

    def _fallback(self, why: str) -> None:
        self._announce()
        if self.flush_control.mode == BACKGROUND:
            log.warning("%s: no failure events (timeouts, crashes) without telemetry", why)
            return
        log.warning("%s: falling back to background flushing", why)
        self.flush_control.fall_back()

    def _start_pipeline(self, ingest_sock: socket.socket, telemetry_sock: Optional[socket.socket]) -> None:
        # Let the main thread put its first /event/next on the wire before the heavy imports.
        self._first_poll_sent.wait(1.0)
        from .util import lean_imports

        lean_imports.install()  # before logging, urllib3 and http.server load (lean_imports.py)
        logs.setup(self.cfg.log_level)
        self._announce()
        if self._telemetry_note:
            log.debug("%s", self._telemetry_note)
        try:
            from .pipeline import Pipeline

            pipeline = Pipeline(self.cfg, ingest_sock, telemetry_sock, self.flush_control, self.telemetry_path)
            with self._invoke_lock:
                self._invoke_sink = pipeline
                if self._last_invoke is not None:
                    pipeline.invoked(self._last_invoke)
            pipeline.start()
            self.pipeline = pipeline
            pipeline.waiting_in_next(self._in_next)  # read after the line above: never a stale value
            if self._restored is not None:  # a restore came while the pipeline was still starting
                pipeline.after_restore(self._restored)
            log.info("relaying %s", self.cfg.describe().replace("flush=" + self.cfg.flush_mode,
                                                                "flush=" + self.flush_control.mode))
            if exec_model.is_managed(self.cfg.init_type):
                log.info("Lambda Managed Instances: registered for SHUTDOWN only, never frozen: sending "
                         "continuously, draining at SHUTDOWN")
        except Exception:
            # The runtime may already run with its DSN pointed here (the record said active): close
            # the held ports so its sends are refused at once instead of waiting in the backlog,
            # and say so. What it sends in this sandbox is lost; the next sandbox starts afresh.
            log.exception("inert: the pipeline failed to start; SDK sends to port %d are refused (lost) "
                          "until this sandbox ends", self.cfg.port)
            for sock in (ingest_sock, telemetry_sock):
                if sock is not None:
                    sock.close()
            handshake.record(self.cfg.state_file, handshake.INERT)
        finally:
            self.ready.set()

    # -- lifecycle loop ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # No I/O here: record it, and break out of a blocking poll.
        self._signal = signum
        if self._polling:
            raise StopSignal()

    def _loop(self) -> int:
        # Lambda API error policy. A failure to reach the API (refused, reset, timed out, malformed
        # reply) or a 5xx other than 500 is transient: retried with backoff (50 ms doubling to 1 s)
        # for as long as it lasts, since exiting would make Lambda reset the sandbox. A fatal answer
        # (4xx, or 500, which the API documents as non-recoverable) will not change on asking again:
        # after FATAL_POLLS of them in a row (about 1.5 s) the API no longer serves this extension,
        # so it stops like at SHUTDOWN (drain briefly, spool the rest), tells Lambda why with
        # /exit/error, and exits 1, letting Lambda reset the sandbox instead of every later
        # invocation waiting on an extension that can never call next.
        backoff = 0.05
        fatal = 0
        while True:  # until SHUTDOWN, a signal or a fatal API answer
            if self._signal is not None:
                return self._stop("signal %d" % self._signal, time.monotonic() + SIGNAL_DRAIN_S)
            try:
                self._polling = True
                self.restore_watch.before_wait()
                self._waiting_in_next(True)
                try:
                    event = self.api.next_event(on_sent=self._first_poll_sent.set)
                finally:
                    self._polling = False
                    self._waiting_in_next(False)
            except StopSignal:
                continue
            except Exception as exc:  # LambdaApiError, or a reply malformed in a way the client missed
                fatal = fatal + 1 if isinstance(exc, LambdaApiError) and exc.fatal else 0
                if fatal >= FATAL_POLLS:
                    return self._give_up(exc)
                log.warning("event/next failed (%s); retrying in %.2fs", exc, backoff,
                            exc_info=not isinstance(exc, LambdaApiError))
                self._sleep(backoff)
                backoff = min(POLL_BACKOFF_CAP_S, backoff * 2)
                continue
            backoff = 0.05
            fatal = 0
            kind = event.get("eventType")
            try:
                restored = self.restore_watch.after_wait()
                if restored is not None:
                    self._after_restore(restored)
                if kind == "INVOKE":
                    self.on_invoke(event)
                elif kind == "SHUTDOWN":
                    deadline = event_deadline(event, self.cfg.deadline_margin_ms)
                    reason = event.get("shutdownReason")
                    return self._stop("SHUTDOWN (%s)" % (reason or "?"), deadline,
                                      reason if isinstance(reason, str) else None)
                else:
                    log.warning("ignoring unknown event type %r", kind)
            except Exception:
                log.exception("error handling %s (survived)", kind)
                if kind == "SHUTDOWN":  # never poll again after SHUTDOWN: Lambda would wait on us until SIGKILL
                    return self._stop("SHUTDOWN", event_deadline(event, self.cfg.deadline_margin_ms))

    def _waiting_in_next(self, waiting: bool) -> None:
        """Tell the pipeline (if started) that a wait in /event/next, where a freeze may come,
        starts or ends; a pipeline that starts during the wait is told when it starts."""
        self._in_next = waiting
        if self.pipeline is not None:
            self.pipeline.waiting_in_next(waiting)

    def _after_restore(self, why: str) -> None:
        """The sandbox came back from a SnapStart snapshot: the pipeline reconnects afresh (or,
        still starting, does so once it has started)."""
        self._restored = why
        if self.cfg.active and self.ready.wait(RESTORE_READY_WAIT_S) and self.pipeline is not None:
            self.pipeline.after_restore(why)

    def _give_up(self, exc: Exception) -> int:
        """The Extensions API keeps refusing /event/next: stop in order, report it, exit 1."""
        log.error("event/next refused %d times in a row (%s); stopping the extension", FATAL_POLLS, exc)
        self._stop("Lambda API error", time.monotonic() + SIGNAL_DRAIN_S)
        try:
            self.api.report_error("exit", "Extension.LambdaApiError", "event/next refused: %s" % str(exc)[:200])
        except LambdaApiError:
            pass
        return 1

    def _sleep(self, seconds: float) -> None:
        try:
            self._polling = True
            time.sleep(seconds)
        except StopSignal:
            pass
        finally:
            self._polling = False

    def on_invoke(self, event: Dict[str, Any]) -> None:
        """After an INVOKE: in ``end`` mode the pipeline waits for runtimeDone and drains, before the deadline."""
        background = self.flush_control.decide() is FlushDecision.BACKGROUND
        with self._invoke_lock:
            self._last_invoke = event
            told = self._invoke_sink
        if told is not None:
            told.invoked(event)  # every mode: which request runs now
        if background or not self.cfg.active:
            return
        now = time.monotonic()
        deadline = event_deadline(event, self.cfg.deadline_margin_ms)
        if not self.ready.wait(max(0.0, min(READY_WAIT_S, deadline - now))) or self.pipeline is None:
            return
        request_id = str(event.get("requestId", ""))
        if not self.pipeline.after_invoke(request_id, deadline, TELEMETRY_GRACE_S):
            self._fallback("no telemetry for %s within %.0f s" % (request_id, TELEMETRY_GRACE_S))

    def _stop(self, why: str, deadline: float, reason: Optional[str] = None) -> int:
        """Orderly end: report failures, drain until ``deadline``, spool the rest, log the summary,
        exit 0. ``reason``: SHUTDOWN's (``timeout``/``failure`` after a reset)."""
        t0 = time.monotonic()
        log.info("%s: draining for up to %.0f ms", why, max(0.0, deadline - t0) * 1000)
        pipeline = None
        if self.cfg.active and self.ready.wait(max(0.0, min(READY_WAIT_S, deadline - t0 - 0.2))):
            pipeline = self.pipeline
        if pipeline is None:
            log.info("summary: nothing relayed (inert)")
            return 0
        try:  # whatever fails in the drain, the process exits: after SHUTDOWN, /event/next would hang
            from .pipeline import drain_verdict  # loaded with the pipeline

            verdict = drain_verdict(pipeline.shutdown(deadline, reason))
        except Exception:
            log.exception("the drain failed (survived); exiting")
            verdict = "failed"
        try:
            summary = pipeline.summary()
        except Exception:
            log.exception("no summary (survived)")
            summary = "?"
        log.info("summary: %s drain_ms=%.0f drain=%s", summary, (time.monotonic() - t0) * 1000, verdict)
        return 0


def run(name: Optional[str] = None) -> int:
    """Entry point: configure logging, run the extension, flush the logs, exit without waiting on threads."""
    cfg = load()
    logs.defer(cfg.log_level)  # logging loads at the first log line, after the first /event/next
    ext_name = name or os.path.basename(sys.argv[0]) or "sentry-lambda-extension"
    code = 1
    ext = Extension(cfg, ext_name)
    try:
        code = ext.run()
    except BaseException:  # a bug in the lifecycle itself: tell Lambda why, then exit non-zero
        log.exception("fatal error in the lifecycle loop")
        try:
            if ext.api.extension_id:
                ext.api.report_error("exit", "Extension.UnexpectedError", "sentry-lambda-extension crashed")
        except LambdaApiError:
            pass
    logs.shutdown()
    sys.stdout.flush()
    # Daemon threads may be blocked on sockets; do not wait for them at interpreter exit.
    os._exit(code)
