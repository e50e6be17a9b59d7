"""Lifecycle on the main thread: register, start the pipeline, loop on /event/next.

Only light modules are imported before the first ``/event/next`` (no logging, json, typing,
dataclasses or urllib.parse: each would add to every cold start); the pipeline (urllib3, ssl,
http.server) loads on a background thread once that ``/event/next`` is on the wire.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sys
import threading
import time

from . import __version__, logs
from .config import Config, load
from .lambda_api import LambdaApi, LambdaApiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Deque, Dict, Optional

log = logs.get("sentry_ext.main")  # imports logging at its first use

SIGNAL_DRAIN_S = 1.5  # drain budget after SIGTERM/SIGINT, inside Lambda's 2 s shutdown window
POLL_BACKOFF_CAP_S = 1.0
READY_WAIT_S = 5.0
TELEMETRY_GRACE_S = 3.0  # platform.start must arrive within this of INVOKE, or telemetry is broken


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
        self.pipeline: Any = None
        self.ready = threading.Event()
        self.mode = cfg.flush_mode
        self._polling = False
        self._signal: Optional[int] = None
        self._invokes: Deque[float] = collections.deque(maxlen=cfg.adaptive_window)
        self._first_poll_sent = threading.Event()
        self._registered_ms: Optional[float] = None

    # -- start-up ------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SHUTDOWN or a signal; returns the process exit code."""
        started = time.monotonic()
        try:
            self.api.register(self.name, parse=False)  # no json before the first /event/next
        except LambdaApiError as exc:
            log.error("could not register with the Extensions API: %s", exc)
            return 1
        self._registered_ms = (time.monotonic() - started) * 1000
        self._install_signals()
        self._prepare()
        return self._loop()

    def _announce(self) -> None:
        """Log the registration (deferred off the start-up path; once)."""
        if self._registered_ms is None:
            return
        ms, self._registered_ms = self._registered_ms, None
        info = self.api.function_info()
        log.info("registered %s %s for %s (%.1f ms after start)", self.name, __version__,
                 info.get("functionName", "?"), ms)

    def _prepare(self) -> None:
        cfg = self.cfg
        if not cfg.active:
            self._announce()
            log.error("inert: %s; the function runs normally, nothing is relayed to Sentry", cfg.problem)
            self.ready.set()
            return
        try:
            ingest_sock = bind_listener(cfg.host, cfg.port)
        except OSError as exc:
            self._announce()
            log.error("inert: cannot listen on %s:%d (%s); set SENTRY_EXT_PORT to a free port",
                      cfg.host, cfg.port, exc)
            self.ready.set()
            return
        telemetry_sock = None
        if self.mode != "background":
            telemetry_sock = self._subscribe_telemetry()
        threading.Thread(target=self._start_pipeline, args=(ingest_sock, telemetry_sock),
                         name="sentry-ext-init", daemon=True).start()

    def _subscribe_telemetry(self) -> Optional[socket.socket]:
        cfg = self.cfg
        bind_host = "0.0.0.0" if cfg.telemetry_host == "sandbox.localdomain" else cfg.telemetry_host
        try:
            sock = bind_listener(bind_host, cfg.telemetry_port)
        except OSError as exc:
            self._fallback("cannot listen on %s:%d for telemetry (%s)" % (bind_host, cfg.telemetry_port, exc))
            return None
        try:
            status, body = self.api.subscribe_telemetry(cfg.telemetry_host, cfg.telemetry_port)
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
        log.warning("%s: falling back to background flushing", why)
        self.mode = "background"

    def _start_pipeline(self, ingest_sock: socket.socket, telemetry_sock: Optional[socket.socket]) -> None:
        # Let the main thread put its first /event/next on the wire before the heavy imports.
        self._first_poll_sent.wait(1.0)
        logs.setup(self.cfg.log_level)
        self._announce()
        try:
            from .headers import speed_up_http_client
            from .pipeline import Pipeline

            speed_up_http_client()  # this process owns its interpreter: urllib3 parses replies faster

            pipeline = Pipeline(self.cfg, ingest_sock, telemetry_sock)
            pipeline.mode = self.mode
            pipeline.start()
            self.pipeline = pipeline
            log.info("relaying %s", self.cfg.describe().replace("flush=" + self.cfg.flush_mode,
                                                                "flush=" + self.mode))
        except Exception:
            log.exception("inert: the pipeline failed to start")
            # Close the held ports so SDK posts fail fast instead of waiting in the backlog.
            for sock in (ingest_sock, telemetry_sock):
                if sock is not None:
                    sock.close()
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
        backoff = 0.05
        while True:  # until SHUTDOWN or a signal
            if self._signal is not None:
                return self._stop("signal %d" % self._signal, time.monotonic() + SIGNAL_DRAIN_S)
            try:
                self._polling = True
                try:
                    event = self.api.next_event(on_sent=self._first_poll_sent.set)
                finally:
                    self._polling = False
            except StopSignal:
                continue
            except Exception as exc:  # LambdaApiError, or a reply malformed in a way the client missed
                log.warning("event/next failed (%s); retrying in %.2fs", exc, backoff,
                            exc_info=not isinstance(exc, LambdaApiError))
                self._sleep(backoff)
                backoff = min(POLL_BACKOFF_CAP_S, backoff * 2)
                continue
            backoff = 0.05
            kind = event.get("eventType")
            try:
                if kind == "INVOKE":
                    self.on_invoke(event)
                elif kind == "SHUTDOWN":
                    deadline = _deadline(event, self.cfg.deadline_margin_ms)
                    return self._stop("SHUTDOWN (%s)" % event.get("shutdownReason", "?"), deadline)
                else:
                    log.warning("ignoring unknown event type %r", kind)
            except Exception:
                log.exception("error handling %s (survived)", kind)

    def _sleep(self, seconds: float) -> None:
        try:
            self._polling = True
            time.sleep(seconds)
        except StopSignal:
            pass
        finally:
            self._polling = False

    def effective_mode(self, now: float) -> str:
        """``end`` or ``background`` for this invocation (``adaptive`` decides by recent traffic)."""
        if self.mode != "adaptive":
            return self.mode
        self._invokes.append(now)
        if len(self._invokes) < self._invokes.maxlen:  # type: ignore[operator]
            return "end"
        mean_gap = (self._invokes[-1] - self._invokes[0]) / (len(self._invokes) - 1)
        return "background" if mean_gap <= self.cfg.adaptive_gap_s else "end"

    def on_invoke(self, event: Dict[str, Any]) -> None:
        """After an INVOKE: in ``end`` mode wait for runtimeDone, then drain, all before the deadline."""
        now = time.monotonic()
        mode = self.effective_mode(now)
        if mode == "background" or not self.cfg.active:
            return
        deadline = _deadline(event, self.cfg.deadline_margin_ms)
        if not self.ready.wait(max(0.0, min(READY_WAIT_S, deadline - now))) or self.pipeline is None:
            return
        pipeline = self.pipeline
        request_id = str(event.get("requestId", ""))
        # platform.start comes within ~25 ms of INVOKE; if it does not, telemetry is broken and
        # waiting for runtimeDone could hold every invocation until its deadline.
        if pipeline.tracker.wait(request_id, min(deadline, now + TELEMETRY_GRACE_S),
                                 ("start", "runtimeDone")) is None and time.monotonic() < deadline:
            self._fallback("no telemetry for %s within %.0f s" % (request_id, TELEMETRY_GRACE_S))
            pipeline.mode = self.mode
            return
        done = pipeline.tracker.wait(request_id, deadline)
        if done is None:
            log.warning("no runtimeDone for %s before the deadline; calling next", request_id)
            pipeline.stats.incr("runtime_done_missed")
            return
        t_done = time.monotonic()
        budget = min(deadline - t_done, self.cfg.flush_timeout_ms / 1000.0)
        flushed = pipeline.flush(budget)
        elapsed_ms = (time.monotonic() - t_done) * 1000
        pipeline.stats.incr("flushes")
        if not flushed:
            pipeline.stats.incr("flushes_incomplete")
            log.info("flush for %s incomplete after %.0f ms; %d request(s) stay queued", request_id,
                     elapsed_ms, len(pipeline.queue))
        else:
            log.debug("flushed %s in %.1f ms", request_id, elapsed_ms)

    def _stop(self, why: str, deadline: float) -> int:
        """Orderly end: drain until ``deadline``, spool the rest, log the summary, exit 0."""
        t0 = time.monotonic()
        log.info("%s: draining for up to %.0f ms", why, max(0.0, deadline - t0) * 1000)
        pipeline = None
        if self.cfg.active and self.ready.wait(max(0.0, min(READY_WAIT_S, deadline - t0 - 0.2))):
            pipeline = self.pipeline
        if pipeline is None:
            log.info("summary: nothing relayed (inert)")
            return 0
        dropped_before = sum(pipeline.stats.snapshot()["dropped"].values())
        outcome = pipeline.shutdown(deadline)
        dropped = sum(pipeline.stats.snapshot()["dropped"].values()) - dropped_before - outcome["lost"]
        log.info("summary: %s drain_ms=%.0f drain=%s", pipeline.stats.summary(), (time.monotonic() - t0) * 1000,
                 _drain_verdict(bool(outcome["drained"]), outcome["spooled"], outcome["lost"], dropped))
        return 0


def _drain_verdict(drained: bool, spooled: int, lost: int, dropped: int) -> str:
    """``complete`` only when the SHUTDOWN drain delivered everything; else what became of the rest."""
    if drained and not (spooled or lost or dropped):
        return "complete"
    parts = ["%d dropped while draining" % dropped] if dropped else []
    if spooled:
        parts.append("%d spooled (sent only after a reset of this environment)" % spooled)
    if lost:
        parts.append("%d lost" % lost)
    return "incomplete(%s)" % ", ".join(parts or ["nothing left"])


def _deadline(event: Dict[str, Any], margin_ms: int) -> float:
    """The event's ``deadlineMs`` (epoch ms) as a monotonic time, less the safety margin."""
    try:
        deadline_ms = float(event["deadlineMs"])
    except (KeyError, TypeError, ValueError):
        deadline_ms = time.time() * 1000 + 2000
    return time.monotonic() + (deadline_ms - margin_ms) / 1000.0 - time.time()


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
