"""Internal faults: an exception in any thread (sender, ingest handler, telemetry listener, main
loop) is logged with its traceback and survived; nothing is left stuck, and the extension only
ever ends at SHUTDOWN or on a signal."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from helpers import KEY, PROJECT, FullDisk, StartPipeline, auth, envelope, port_of, post, stop, wait_until
from sentry_ext.config import load
from sentry_ext.awslambda.extensions_api import LambdaApi
from sentry_ext.main import Extension, bind_listener
from sentry_ext.pipeline import Pipeline
from tools.fake_upstream import FakeUpstream


class Boom(RuntimeError):
    """The injected fault."""


def raise_once(original: Any, times: int = 1) -> Any:
    """A wrapper that raises Boom on its first ``times`` calls, then behaves like ``original``."""
    state = {"left": times}
    lock = threading.Lock()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            fire = state["left"] > 0
            state["left"] -= 1
        if fire:
            raise Boom("injected fault")
        return original(*args, **kwargs)

    return wrapper


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and r.exc_info and r.exc_info[0] is Boom]


@pytest.fixture
def pipe(pipelines: StartPipeline) -> Pipeline:
    return pipelines(SENTRY_EXT_SENDERS="1")


def delivered(upstream: FakeUpstream) -> set:
    return {r.envelope.event_id for r in upstream.requests if r.envelope is not None and r.status == 200}


# -- sender thread -------------------------------------------------------------------------


def test_sender_survives_a_transport_exception_and_nothing_stays_in_flight(
        pipe: Pipeline, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.ERROR, logger="sentry_ext")
    monkeypatch.setattr(pipe.transport, "send", raise_once(pipe.transport.send))
    for index in range(3):
        assert post(port_of(pipe), "/api/42/envelope/", envelope("%032x" % index), auth())[0] == 200
    # the request that met the fault is retried, not stuck: the flush completes
    assert pipe.flush(5.0), pipe.queue.depth()
    assert {"%032x" % i for i in range(3)} <= delivered(upstream)
    assert pipe.queue.depth() == {"queued": 0, "in_flight": 0, "bytes": 0}
    assert all(t.is_alive() for t in pipe.forwarder._threads)
    assert tracebacks(caplog, "sender thread error (survived)")


def poison(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """Make the sender raise Boom on every request whose body says "poison"; returns the list
    of monotonic times it did."""
    original = pipe.transport.send
    raised: List[float] = []

    def poisoned(req: Any, read_timeout: Optional[float] = None) -> Any:
        if b"poison" in req.body:
            raised.append(time.monotonic())
            raise Boom("this request always breaks the sender")
        return original(req, read_timeout=read_timeout)

    monkeypatch.setattr(pipe.transport, "send", poisoned)
    return raised


@pytest.fixture
def poisoned_pipe(pipelines: StartPipeline) -> Pipeline:
    return pipelines(SENTRY_EXT_SENDERS="1", SENTRY_EXT_MAX_ATTEMPTS="4")


def post_poison_then_healthy(pipe: Pipeline) -> None:
    assert post(port_of(pipe), "/api/42/envelope/", envelope("a" * 32, payload=b'{"m":"poison"}'), auth())[0] == 200
    assert post(port_of(pipe), "/api/42/envelope/", envelope("b" * 32), auth())[0] == 200


def test_a_request_that_always_crashes_the_sender_is_dropped_and_counted(
        poisoned_pipe: Pipeline, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.ERROR, logger="sentry_ext")
    pipe = poisoned_pipe
    poison(pipe, monkeypatch)
    post_poison_then_healthy(pipe)
    assert pipe.flush(5.0), pipe.queue.depth()
    assert "b" * 32 in delivered(upstream) and "a" * 32 not in delivered(upstream)
    # the drop is counted just after the request is released, which is what ends the flush
    assert wait_until(lambda: pipe.stats.dropped("internal_sdk_error") == 1, 5), pipe.stats.snapshot()
    assert all(t.is_alive() for t in pipe.forwarder._threads)


def test_a_sender_bug_is_retried_with_backoff_and_its_traceback_logged_once(
        poisoned_pipe: Pipeline, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sentry_ext.delivery.forwarder import BACKOFF_BASE_S

    caplog.set_level(logging.DEBUG, logger="sentry_ext")
    pipe = poisoned_pipe
    raised = poison(pipe, monkeypatch)
    post_poison_then_healthy(pipe)
    assert pipe.flush(5.0), pipe.queue.depth()
    assert len(raised) == 4  # max_attempts
    # the forwarder's grace period between attempts: at least half of 50 ms, doubling
    gaps = [b - a for a, b in zip(raised, raised[1:])]
    assert all(gap >= BACKOFF_BASE_S * 2 ** i / 2 * 0.95 for i, gap in enumerate(gaps)), gaps
    assert len(tracebacks(caplog, "sender thread error (survived)")) == 1
    assert len([r for r in caplog.records if "sender thread error (survived)" in r.getMessage()]) == 4



def test_a_bug_before_the_send_still_uses_up_the_attempts(poisoned_pipe: Pipeline, upstream: FakeUpstream,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug before the send counts its attempt: the request is dropped, not retried forever."""
    pipe = poisoned_pipe

    def broken() -> Any:
        raise Boom("before the attempt is counted")

    monkeypatch.setattr(pipe.forwarder, "_read_timeout", broken)
    assert post(port_of(pipe), "/api/42/envelope/", envelope("c" * 32), auth())[0] == 200
    assert pipe.flush(5.0), pipe.queue.depth()
    assert wait_until(lambda: pipe.stats.dropped("internal_sdk_error") == 1, 5), pipe.stats.snapshot()
    assert upstream.requests == []

def test_a_request_given_up_after_sender_bugs_is_reported_to_sentry_as_internal_sdk_error(
        poisoned_pipe: Pipeline, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = poisoned_pipe
    poison(pipe, monkeypatch)
    post_poison_then_healthy(pipe)
    assert pipe.flush(5.0), pipe.queue.depth()
    assert wait_until(lambda: pipe.stats.dropped("internal_sdk_error") == 1, 5), pipe.stats.snapshot()
    assert pipe.flush(5.0)  # sends the pending client report
    reports = [json.loads(payload) for _, _, payload in upstream.items("client_report")]
    assert [e for r in reports for e in r["discarded_events"]] == [
        {"reason": "internal_sdk_error", "category": "error", "quantity": 1}], reports


# -- ingest handler ------------------------------------------------------------------------


def test_ingest_handler_survives_a_hook_exception(pipe: Pipeline, upstream: FakeUpstream,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sentry_ext")
    original = pipe.server.before_queue or (lambda req, header: None)
    pipe.server.before_queue = raise_once(original)
    status, _, body = post(port_of(pipe), "/api/42/envelope/", envelope("c" * 32), auth())
    assert status == 500 and "internal error" in body["detail"]
    assert tracebacks(caplog, "ingest handler error (survived)")
    # the same server, the next request: served and delivered
    status, _, _ = post(port_of(pipe), "/api/42/envelope/", envelope("d" * 32), auth())
    assert status == 200
    assert upstream.wait_for(lambda _: "d" * 32 in delivered(upstream), 5)
    assert pipe.server._thread is not None and pipe.server._thread.is_alive()


def test_ingest_survives_an_exception_in_the_health_extra(pipe: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    import http.client

    caplog.set_level(logging.ERROR, logger="sentry_ext")
    pipe.server.health_extra = raise_once(pipe.server.health_extra or dict)
    for expected in ("error", 200):
        conn = http.client.HTTPConnection("127.0.0.1", port_of(pipe), timeout=5)
        try:
            conn.request("GET", "/health")
            status = conn.getresponse().status
        except (http.client.HTTPException, ConnectionError):
            status = "error"  # the connection was closed without an answer
        finally:
            conn.close()
        assert status == expected or (expected == "error" and status == 500)
    assert tracebacks(caplog, "(survived)")


# -- telemetry listener --------------------------------------------------------------------


def test_telemetry_listener_survives_an_exception_in_its_consumer(upstream: FakeUpstream, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    caplog.set_level(logging.ERROR, logger="sentry_ext")
    cfg = load({"SENTRY_DSN": upstream.dsn(KEY, PROJECT), "SENTRY_EXT_SPOOL_DIR": "/nonexistent"})
    pipeline = Pipeline(cfg, bind_listener("127.0.0.1", 0), bind_listener("127.0.0.1", 0))
    pipeline.start()
    try:
        assert pipeline.listener is not None
        monkeypatch.setattr(pipeline.invocations, "feed", raise_once(pipeline.invocations.feed))
        port = pipeline.listener.server_address[1]
        batch = json.dumps([{"time": "t", "type": "platform.runtimeDone",
                             "record": {"requestId": "req-1", "status": "success"}}]).encode()
        statuses = []
        for _ in range(2):  # Lambda retries a batch the listener failed
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", pipeline.listener.path, batch, {"Content-Type": "application/json"})
                statuses.append(conn.getresponse().status)
            finally:
                conn.close()
        assert statuses == [500, 200]
        assert tracebacks(caplog, "telemetry listener error (survived)")
        import time

        assert pipeline.invocations.wait("req-1", time.monotonic() + 2)
    finally:
        stop(pipeline)


# -- main loop -----------------------------------------------------------------------------


class StubLambda:
    """A minimal Extensions API on 127.0.0.1: register, then each /event/next pops one scripted
    reply (raw bytes to send, or an event dict); after the script, SHUTDOWN."""

    def __init__(self, script: List[Any]) -> None:
        self.script = list(script)
        self.calls: List[str] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, status: int, payload: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._body()
                with stub.lock:
                    stub.calls.append(self.path)
                if self.path.endswith("/register"):
                    self._json(200, {"functionName": "f", "functionVersion": "$LATEST", "handler": "h"},
                               {"Lambda-Extension-Identifier": "ext-1"})
                else:
                    self._json(202, {})

            def do_GET(self) -> None:
                with stub.lock:
                    stub.calls.append(self.path)
                    step = stub.script.pop(0) if stub.script else {"eventType": "SHUTDOWN", "deadlineMs": 0,
                                                                   "shutdownReason": "spindown"}
                if isinstance(step, bytes):
                    self.close_connection = True
                    self.wfile.write(step)
                    return
                if step.get("deadlineMs") == 0:
                    import time

                    step = dict(step, deadlineMs=int(time.time() * 1000) + 1000)
                self._json(200, step)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.server.server_address[1]

    def nexts(self) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c.endswith("/event/next"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_loop(stub: StubLambda, ext: Extension) -> int:
    """Register and run the lifecycle loop on a thread (bounded), as ``Extension.run`` would."""
    ext.api.register("sentry-lambda-extension")
    result: Dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", ext._loop()), daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "the loop did not reach SHUTDOWN"
    return result["code"]


def invoke(request_id: str) -> Dict[str, Any]:
    import time

    return {"eventType": "INVOKE", "requestId": request_id, "deadlineMs": int(time.time() * 1000) + 3000,
            "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f"}


def test_main_loop_survives_an_exception_handling_an_invoke(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sentry_ext")
    stub = StubLambda([invoke("r1"), invoke("r2")])
    try:
        ext = Extension(load({"AWS_LAMBDA_RUNTIME_API": stub.address}), "sentry-lambda-extension",
                        LambdaApi(stub.address))
        handled: List[str] = []
        ext.on_invoke = raise_once(lambda event: handled.append(event["requestId"]))  # type: ignore[method-assign]
        assert run_loop(stub, ext) == 0
    finally:
        stub.close()
    assert handled == ["r2"]  # the loop went on to the next event after the fault
    assert stub.nexts() == 3  # INVOKE r1 (fault), INVOKE r2, SHUTDOWN
    assert tracebacks(caplog, "error handling INVOKE (survived)")


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[1,2]",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"[" * 200000,
    b"garbage\r\n\r\n",
    b"",
], ids=["500", "not-an-event", "bad-length", "bad-chunk", "json-bomb", "garbage", "closed"])
def test_main_loop_survives_a_broken_event_next_reply(reply: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sentry_ext")
    # A kept connection closed with no byte of a reply is taken for one the server closed while idle:
    # the request goes once more, on a fresh connection, where the same close is the error.
    broken = [reply, reply] if reply == b"" else [reply]
    stub = StubLambda(broken + [invoke("after"), {"eventType": "SURPRISE"}])
    try:
        ext = Extension(load({"AWS_LAMBDA_RUNTIME_API": stub.address}), "sentry-lambda-extension",
                        LambdaApi(stub.address))
        handled: List[str] = []
        ext.on_invoke = lambda event: handled.append(event["requestId"])  # type: ignore[method-assign]
        assert run_loop(stub, ext) == 0  # it ends at SHUTDOWN, not on the broken reply
    finally:
        stub.close()
    assert handled == ["after"]
    assert stub.nexts() == 3 + len(broken)
    assert any("event/next failed" in r.getMessage() for r in caplog.records)
    assert any("unknown event type" in r.getMessage() for r in caplog.records)


def test_extension_process_survives_faults_and_ends_only_at_shutdown(tmp_path, upstream: FakeUpstream) -> None:
    """The real process under the emulator: a 5xx storm plus a sandbox reset, then a clean SHUTDOWN exit."""
    from e2e import EXTENSION_NAME, ext_log, make_emulator
    from tools.fake_upstream import Reply

    upstream.script([Reply(500)] * 6)
    with make_emulator(tmp_path, upstream, timeout_s=3.0) as emu:
        emu.start()
        pid = emu.pids[EXTENSION_NAME]
        for _ in range(3):
            assert emu.invoke({}).status == "success"
            assert emu.pids.get(EXTENSION_NAME) == pid  # same process: it never exited
        shutdown = emu.shutdown()
        log = ext_log(emu)
    assert shutdown.exit_codes[EXTENSION_NAME] == 0 and not shutdown.killed, log
    assert "fatal error" not in log and "Traceback" not in log, log


# -- the SHUTDOWN drain --------------------------------------------------------------------


def queue_unsendable(pipe: Pipeline, count: int, size: int = 20) -> None:
    """``count`` envelopes held in the queue by an upstream grace period that outlasts any drain."""
    pipe.queue.pause_until(time.monotonic() + 3600)
    for index in range(count):
        body = envelope("%032x" % index, payload=b'{"message":"%s"}' % (b"x" * size))
        assert post(port_of(pipe), "/api/42/envelope/", body, auth())[0] == 200
    assert pipe.queue.depth()["queued"] == count


def summary_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_full_tmp_at_shutdown_loses_what_it_cannot_spool_counted_and_reported(
        pipelines: StartPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from sentry_ext.delivery import spool as spool_module
    from sentry_ext.delivery.spool import Spool

    caplog.set_level(logging.INFO, logger="sentry_ext")
    spool = tmp_path / "spool"
    pipe = pipelines(spool=str(spool))
    queue_unsendable(pipe, 5, size=2000)
    # /tmp has room for a small file (the client report), not for an envelope of 2 KB
    monkeypatch.setattr(spool_module, "os", FullDisk(room=1500))
    t0 = time.monotonic()
    outcome = pipe.shutdown(t0 + 0.8)
    assert time.monotonic() - t0 < 0.8
    assert (outcome["lost"], outcome["spooled"], outcome["failed"]) == (5, 1, 0), outcome
    assert pipe.stats.dropped("network_error") == 5
    assert any("lost 5 unsent request(s)" in r.getMessage() for r in caplog.records)
    assert all(name.endswith(".sle") for name in os.listdir(spool)), os.listdir(spool)  # no .tmp left
    monkeypatch.undo()
    loaded = Spool(str(spool), 1 << 20, 3600, KEY).load().requests
    assert len(loaded) == 1 and b'"client_report"' in loaded[0].body  # the loss, told to Sentry
    payload = json.loads(loaded[0].body.split(b"\n")[2])
    assert payload["discarded_events"] == [{"reason": "network_error", "category": "error", "quantity": 5}]


def shutdown_extension(pipe: Pipeline, stub: StubLambda, upstream: FakeUpstream) -> Extension:
    """An Extension on ``stub`` whose pipeline, ``pipe``, is ready."""
    ext = Extension(load({"AWS_LAMBDA_RUNTIME_API": stub.address, "SENTRY_DSN": upstream.dsn(KEY, PROJECT)}),
                    "sentry-lambda-extension", LambdaApi(stub.address))
    ext.pipeline = pipe
    ext.ready.set()
    return ext


def test_shutdown_on_a_full_tmp_exits_with_the_loss_in_the_summary(
        pipelines: StartPipeline, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from sentry_ext.delivery import spool as spool_module

    caplog.set_level(logging.INFO, logger="sentry_ext")
    pipe = pipelines(spool=str(tmp_path))
    queue_unsendable(pipe, 5)
    monkeypatch.setattr(spool_module, "os", FullDisk(room=0))
    stub = StubLambda([])  # SHUTDOWN (spindown) with 1 s to go
    try:
        t0 = time.monotonic()
        assert run_loop(stub, shutdown_extension(pipe, stub, upstream)) == 0
        assert time.monotonic() - t0 < 1.0
    finally:
        stub.close()
    assert stub.nexts() == 1  # exited: no /event/next after SHUTDOWN
    line = summary_line(caplog)
    assert "dropped=network_error:5" in line and "drain=incomplete(5 lost)" in line, line
    assert os.listdir(tmp_path) == []  # neither a spool file nor a .tmp
    assert not any("survived" in r.getMessage() for r in caplog.records)


SHUTDOWN_STEPS = ["invocations.await_outcome", "invocations.settle_all", "log_router.flush", "reports.send",
                  "forwarder.flush", "forwarder.stop", "queue.take_all", "spool.write", "reports.take_requests",
                  "shutdown", "summary", "ext.restore_watch.after_wait"]


@pytest.mark.parametrize("step", SHUTDOWN_STEPS)
def test_an_exception_in_any_step_of_the_shutdown_drain_still_ends_in_exit(
        step: str, pipelines: StartPipeline, upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sentry_ext")
    # every step runs: function logs on, a client report pending, leftovers the spool cannot take
    pipe = pipelines(spool=str(tmp_path), SENTRY_EXT_LOGS="on", SENTRY_EXT_SPOOL_MAX_BYTES="64")
    pipe.discards.record(KEY, "queue_overflow", "error")
    queue_unsendable(pipe, 2)
    stub = StubLambda([])
    ext = shutdown_extension(pipe, stub, upstream)
    owner_name, _, name = step.rpartition(".")
    owner: Any = pipe
    for part in owner_name.split(".") if owner_name else ():
        owner = ext if part == "ext" else getattr(owner, part)
    monkeypatch.setattr(owner, name, raise_once(getattr(owner, name)))
    try:
        t0 = time.monotonic()
        assert run_loop(stub, ext) == 0
        assert time.monotonic() - t0 < 1.0
    finally:
        stub.close()
    assert stub.nexts() == 1  # exited at the first SHUTDOWN, within its deadline
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is Boom], "the fault was not logged"
    line = summary_line(caplog)
    assert "drain=" in line and "drain=complete" not in line, line
